"""Helper for tests/test_train_cli.py: `python tests/ddp_worker.py OUT_DIR CLI_ARGS...` trains
through `WaveNetCLI` and has every rank write `OUT_DIR/rank<r>.pt`: its initial and final weights,
step count, world size and the checksum of each epoch's first training batch. Lightning's DDP launcher
re-runs this script (same arguments) for the other ranks."""

from __future__ import annotations

import sys

import torch
from pytorch_lightning.callbacks import Callback

from wavekit.train import WaveNetCLI


class FirstBatches(Callback):
    """Remembers the initial weights and the sum of each epoch's first training batch's audio
    (which differs between ranks, and between epochs)."""

    def __init__(self):
        self.checksums: list[float] = []
        self.initial: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.initial = {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.checksums.append(batch["audio"].double().sum().item())


def main(out_dir: str, args: list[str]) -> None:
    torch.set_num_threads(1)
    cli = WaveNetCLI(args)
    first = FirstBatches()
    cli.trainer.callbacks.append(first)
    cli.fit()
    trainer = cli.trainer
    state = {k: v.detach().clone() for k, v in cli.model.net.state_dict().items()}
    result = {
        "weights": state, "initial": first.initial, "step": trainer.global_step, "world_size": trainer.world_size,
        "first": first.checksums,
    }  # fmt: skip
    torch.save(result, f"{out_dir}/rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
