"""Train a small MLP whose optimizer runs in an orthod daemon.

    make run                                    # the daemon on 127.0.0.1:50051
    PYTHONPATH=build/python /usr/bin/python3 examples/train_mlp.py [--address HOST:PORT]

The model, the data and the backward pass stay in this process. Every step, RemoteOptimizer
pushes the gradients to the daemon, which applies Muon to the weight matrices and AdamW to the
biases and streams the new weights back into the model.
"""

import argparse

import torch

import orthod

PREFIX = "examples/train_mlp/"  # parameter names on the daemon

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--address", default="127.0.0.1:50051", help="the daemon (default %(default)s)")
ap.add_argument("--steps", type=int, default=200)
args = ap.parse_args()

# Synthetic regression: fit a random 32 -> 16 -> 8 tanh network.
torch.manual_seed(0)
X = torch.randn(1024, 32)
teacher = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
with torch.no_grad():
    Y = teacher(X)
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(),
                            torch.nn.Linear(64, 64), torch.nn.Tanh(), torch.nn.Linear(64, 8))
params = [(PREFIX + name, p) for name, p in model.named_parameters()]


def drop_ours(client):
    """Remove this example's parameters (left by an earlier run) so that each run starts fresh."""
    for info in client.list(prefix=PREFIX):
        client.drop(info["name"])


with orthod.Client(args.address) as client:
    drop_ours(client)
    # Registers every parameter and uploads its initial weights.
    opt = orthod.RemoteOptimizer([
        {"params": [(n, p) for n, p in params if p.ndim >= 2], "algorithm": "muon", "lr": 0.02,
         "scale_mode": "shape_scaling"},
        {"params": [(n, p) for n, p in params if p.ndim < 2], "algorithm": "adamw", "lr": 0.005},
    ], address=args.address)
    try:
        for step in range(args.steps + 1):
            if step % 20 == 0:
                with torch.no_grad():
                    print("step %4d  loss %.5f" % (step, torch.nn.functional.mse_loss(model(X), Y)))
            if step == args.steps:
                break
            batch = torch.randint(0, len(X), (64,))
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(X[batch]), Y[batch]).backward()
            opt.step()  # gradients out, new weights in
    finally:
        drop_ours(client)
