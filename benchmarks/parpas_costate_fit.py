"""How well can parpas' affine regression fit the co-states at all (issue 15)?

    python benchmarks/parpas_costate_fit.py [--config ellipses] [--ranks 2] [--seeds 0,1,2]
        [--set k=v ...]

Trains the config with global prediction and single-level (as ``paper_tables.py parpas``),
then reads each run's final checkpoint and, on the whole training set, takes the exact
(state, co-state) pairs of the final network at every interface (serial forward and
backward in float64; per-sample co-states ``d loss_i / d X_i``, the method's own). Per
interface it reports, relative to the mean square co-state:

- ``floor``: the best fit of the regression's own model to those pairs (the same per-class
  affine map and ridge, fitted to them): what the paper's model (6) can do for this network;
- ``own``: the run's final regression (its checkpointed blocks) on the same pairs: what it
  used at the end, from the pairs it collected during the run;

and the mean square co-state. The regression error the method logs (``regression_mse``)
is the run's fit on pairs from stale input states; ``own`` removes the staleness of the
states and ``floor`` the history of the fit as well.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import h5py
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_tables import PARPAS_VARIANTS, tail_mean, train  # noqa: E402

from mgrit_nn.config import read_config  # noqa: E402
from mgrit_nn.data import load_dataset  # noqa: E402
from mgrit_nn.model.init import shapes  # noqa: E402
from mgrit_nn.model.regression import Regression  # noqa: E402
from mgrit_nn.model.serial import SerialResNet  # noqa: E402


def final_network(config: str, sets: list[str], ckpt: Path):
    """The run's config, data and its final network (SerialResNet, float64)."""
    cfg, _ = read_config(config, sets)
    d = cfg.data
    data = load_dataset(d.name, d.path, d.n_train, d.n_val, d.seed)
    net = SerialResNet(cfg.model, shapes(cfg.model, data.input_shape, data.n_classes))
    with h5py.File(ckpt) as f, torch.no_grad():
        m = f["model"]
        pairs = [(net.opening, m["opening"]), (net.classifier, m["classifier"])]
        pairs += [(layer, m["layers"][f"{j:05d}"]) for j, layer in enumerate(net.layers)]
        for module, g in pairs:
            module.weight.copy_(torch.from_numpy(g["weight"][()]))
            module.bias.copy_(torch.from_numpy(g["bias"][()]))
        blocks = f["parpas/regression"][()]
        points = f["parpas/interfaces"][()]
    return cfg, data, net, blocks, points


def interface_pairs(net: SerialResNet, states: list[torch.Tensor], y: torch.Tensor,
                    point: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat states at fine point ``point`` of every sample (``states``: the network's,
    ``net.states(x)``, taken once for all interfaces) and their per-sample co-states
    ``d loss_i / d X_i`` (the method's convention: the sum of the losses)."""
    X = states[point].detach().requires_grad_()
    with torch.enable_grad():
        loss = F.cross_entropy(net.head(net.steps(X, point)[-1]), y, reduction="sum")
        (P,) = torch.autograd.grad(loss, X)
    return X.detach().flatten(1), P.flatten(1)


def relative_error(reg: Regression, X: torch.Tensor, P: torch.Tensor, g: torch.Tensor) -> float:
    """Mean square error of the regression's prediction over the mean square co-state."""
    return float(((reg.predict(X, g) - P) ** 2).mean() / (P ** 2).mean())


def costate_fit(config: str, sets: list[str], ckpt: Path) -> list[dict]:
    """Per interface: floor, own (relative MSE) and the mean square co-state."""
    cfg, data, net, blocks, points = final_network(config, sets, ckpt)
    x, y, c = data.x_train.double(), data.y_train, cfg.parpas
    groups = data.n_classes if c.per_class else 1
    g = y if c.per_class else torch.zeros_like(y)
    out = []
    with torch.no_grad():
        states = net.states(x)
    for k, point in enumerate(points):
        X, P = interface_pairs(net, states, y, int(point))
        best = Regression(X.shape[1], groups, c.ridge, 0)
        best.add(X, P, g)
        own = Regression(X.shape[1], groups, c.ridge, 0)
        own.load(blocks[k])
        out.append({"point": int(point), "p2": float((P ** 2).mean()),
                    "floor": relative_error(best, X, P, g),
                    "own": relative_error(own, X, P, g)})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="ellipses", help="configs/NAME_parpas.yaml")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--set", action="append", default=[])
    args = p.parse_args()
    config = f"configs/{args.config}_parpas.yaml"
    print(f"{config} on {args.ranks} ranks {' '.join(args.set)}; relative MSE = MSE / mean "
          "square co-state, on the final network's exact pairs (all training samples); "
          "logged: the run's regression_rel_mse (all interfaces together), mean of the last "
          "20 steps\n")
    print("| seed | variant | val acc | interface | mean square co-state | floor (best "
          "affine fit) | own (the run's final fit) | logged |")
    print("|---|---|---|---|---|---|---|---|")
    for seed in map(int, args.seeds.split(",")):
        for variant, extra in PARPAS_VARIANTS.items():
            sets = [f"model.seed={seed}", *args.set, "checkpoint.layout=single", *extra]
            with tempfile.TemporaryDirectory() as d:
                r = train(config, args.ranks, sets, Path(d),
                          cols=("regression_mse", "regression_rel_mse"))
                ckpt = max((Path(d) / "checkpoints").glob("step_*.h5"))
                rows = costate_fit(config, ["runtime.threads=1", *sets], ckpt)
            for row in rows:
                print(f"| {seed} | {variant} | {r['val_accuracy']:.3f} | {row['point']} "
                      f"| {row['p2']:.3g} | {row['floor']:.3f} | {row['own']:.3f} "
                      f"| {tail_mean(r, 'regression_rel_mse'):.3f} |", flush=True)


if __name__ == "__main__":
    main()
