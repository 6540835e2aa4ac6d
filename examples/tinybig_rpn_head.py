"""A tinyBIG-style RPN head trained with tinybig_cuda's masking and with a replica of tinyBIG's.

The head is built by hand the way tinyBIG's `rpn_head` builds it:

    kappa(x) = [x, x (x) x]                    degree-2 Taylor expansion, D = m + m*m
    l        = fabrication.calculate_l(n, D)   (= n*D for masking reconciliation)
    w        = Parameter(torch.rand(channels, l))
    g(x)     = mean_c F.linear(kappa(x), fabrication(w=w[c:c+1], n=n, D=D), b)   (mean channel fusion)

and trained twice on the same generated data set, from the same initial parameters and batch
order: once with `tinybig_cuda.masking_reconciliation` (Philox mask, fused, never stored) and once
with `TinybigMaskingReconciliation`, a faithful replica of tinyBIG 0.2.1's class
(`torch.rand(n, D) < p`, then `w.view(n, D) * mask`). The two draw different masks (Philox versus
the MT19937 generator), so accuracies agree statistically, not bit for bit.

The data set is generated: `classes` Gaussian classes in `m` dimensions with their own means and
covariances, whose Bayes-optimal boundaries are quadratic, so the degree-2 expansion suits them.

    python examples/tinybig_rpn_head.py                 # fresh masks, then fixed masks
    python examples/tinybig_rpn_head.py --quick         # the short run the tests use
    python examples/tinybig_rpn_head.py --mask fixed --epochs 20 --m 32
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import tinybig_cuda

# The one replica of tinyBIG's class, shared with the benchmarks.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from tinybig_replica import masking_reconciliation as TinybigMaskingReconciliation  # noqa: E402


def taylor_expansion(x: torch.Tensor) -> torch.Tensor:
    """kappa(x) = [x, vec(x x^T)]: tinyBIG's degree-2 Taylor expansion, D = m + m*m."""
    return torch.cat([x, (x.unsqueeze(2) * x.unsqueeze(1)).flatten(1)], dim=1)


class RPNHead(torch.nn.Module):
    """One tinyBIG RPN head: expansion, multi-channel fabricated parameters, mean fusion, no remainder."""

    def __init__(self, m, n, channels, fabrication, device="cpu"):
        super().__init__()
        self.m, self.n, self.D, self.channels, self.device = m, n, m + m * m, channels, device
        self.fabrication = fabrication
        l = fabrication.calculate_l(n=self.n, D=self.D)
        self.w = torch.nn.Parameter(torch.rand(channels, l))  # tinyBIG's initialisation
        self.b = torch.nn.Parameter(torch.zeros(n))

    def forward(self, x):
        kappa_x = taylor_expansion(x)
        outputs = [F.linear(kappa_x, self.fabrication(w=self.w[c:c + 1, :], n=self.n, D=self.D, device=self.device),
                            bias=self.b) for c in range(self.channels)]
        return torch.stack(outputs).mean(dim=0)


def make_dataset(m, classes, train_size, test_size, seed):
    """Gaussian classes with their own means and covariances, standardised with the training statistics."""
    generator = torch.Generator().manual_seed(seed)
    means = 0.8 * torch.randn(classes, m, generator=generator)
    mixing = torch.randn(classes, m, m, generator=generator) / m**0.5  # covariance_k = A_k A_k^T

    def sample(count):
        labels = torch.randint(classes, (count,), generator=generator)
        noise = torch.randn(count, m, 1, generator=generator)
        x = means[labels] + (mixing[labels] @ noise).squeeze(2) + 0.3 * torch.randn(count, m, generator=generator)
        return x, labels

    x_train, y_train = sample(train_size)
    x_test, y_test = sample(test_size)
    mean, std = x_train.mean(0), x_train.std(0)
    return (x_train - mean) / std, y_train, (x_test - mean) / std, y_test


@torch.no_grad()
def accuracy(model, x, y, batch_size=1024):
    correct = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(x), batch_size))
    return correct / len(x)


def train(fabrication, data, args):
    """Trains one head; returns (test accuracy, epoch times in seconds). Same init and batches for every call."""
    x_train, y_train, x_test, y_test = data
    torch.manual_seed(args.seed)
    model = RPNHead(args.m, args.classes, args.channels, fabrication)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    order_generator = torch.Generator().manual_seed(args.seed)
    epoch_times = []
    for _ in range(args.epochs):
        order = torch.randperm(len(x_train), generator=order_generator)
        start = time.perf_counter()
        for i in range(0, len(x_train), args.batch_size):
            batch = order[i:i + args.batch_size]
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        epoch_times.append(time.perf_counter() - start)
    return accuracy(model, x_test, y_test), epoch_times


def run(args):
    """Trains with both implementations for each mask mode; returns a list of result dicts."""
    data = make_dataset(args.m, args.classes, args.train_size, args.test_size, args.seed)
    modes = ["fresh", "fixed"] if args.mask == "both" else [args.mask]
    results = []
    for mode in modes:
        fixed = mode == "fixed"
        implementations = {
            "tinybig_cuda": lambda: tinybig_cuda.masking_reconciliation(p=args.p, fixed_mask=fixed),
            "tinyBIG replica": lambda: TinybigMaskingReconciliation(p=args.p, fixed_mask=fixed),
        }
        for name, make in implementations.items():
            torch.manual_seed(args.seed + 1)  # each fabrication draws its mask state from here
            test_accuracy, epoch_times = train(make(), data, args)
            results.append(dict(mask=mode, implementation=name, accuracy=test_accuracy,
                                epoch_s=statistics.median(epoch_times)))
    return results


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (a few seconds) for the tests")
    parser.add_argument("--mask", choices=["fresh", "fixed", "both"], default="both",
                        help="fixed_mask=False (a new mask per call and channel), True, or both")
    parser.add_argument("--p", type=float, default=0.5, help="keep probability")
    parser.add_argument("--m", type=int, default=16, help="input features")
    parser.add_argument("--classes", type=int, default=6, help="n, the head's outputs")
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=12000)
    parser.add_argument("--test-size", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; these matrices are too small to gain from more, and one "
                             "thread keeps the timings steady on a shared machine")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_size, args.test_size, args.epochs = 6000, 2000, 3
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.classes} Gaussian classes, m={args.m} (D={args.m + args.m**2}), {args.channels} channels, "
          f"p={args.p}, {args.train_size} train / {args.test_size} test, {args.epochs} epochs, "
          f"batch {args.batch_size}, {torch.get_num_threads()} threads")
    results = run(args)
    print("\n| mask  | implementation  | test accuracy | time per epoch (median) |")
    print("|-------|-----------------|---------------|-------------------------|")
    for r in results:
        print(f"| {r['mask']:<5} | {r['implementation']:<15} | {r['accuracy']:13.4f} | {r['epoch_s'] * 1e3:20.1f} ms |")
    return results


if __name__ == "__main__":
    main()
