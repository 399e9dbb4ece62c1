"""OSRL's PyTorch CDT training throughput, for the side-by-side comparison of issue 14 (quiet machine only).

Runs in its own virtual environment (OSRL pins torch 1.13 and old wandb/protobuf; here its CDT and trainer modules
run on the CPU torch of this machine, installed without those pins)::

    python3 -m venv .venv-osrl
    .venv-osrl/bin/pip install /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl numpy tqdm gymnasium
    .venv-osrl/bin/pip install --no-deps osrl-lib==0.1.0 fast-safe-rl
    .venv-osrl/bin/pip install pyyaml tensorboard wandb scipy numba h5py   # imported by fsrl.utils / osrl.common
    .venv-osrl/bin/python benchmarks/offline_osrl_throughput.py --size osrl --state-dim 28 --action-dim 2

It builds ``osrl.algorithms.CDT`` and ``CDTTrainer`` with OSRL's CDT settings (``--size osrl``: 3 layers, 8 heads,
128-d, context 10, batch 2048; ``--size laptop``: the laptop budget of ``benchmarks/offline.py``: 2 layers, 2 heads,
32-d, batch 64; stochastic head with entropy, time embedding, cost_transform, dropout 0.1, AdamW 1e-4 / 1e-4,
clip 0.25, warm-up 500, cost-loss weight 0.02) and times ``train_one_step`` on pre-drawn random batches (so OSRL's
data loader is *not* counted; ours samples its windows inside the compiled step). Prints one JSON line. OSRL prints
"OApackage is not installed, can not use CDT": that package is only its Pareto augmentation's, unused here. The same
configuration of ours: ``python benchmarks/offline.py --throughput --budget full --seeds 1 --updates 20 --learners cdt``
(``--budget laptop`` for the laptop size); both on the same quiet machine, all cores.
"""

from __future__ import annotations

import argparse
import json
import time

SIZES = {"osrl": dict(embedding_dim=128, num_layers=3, num_heads=8, batch=2048),
         "laptop": dict(embedding_dim=32, num_layers=2, num_heads=2, batch=64)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="osrl", choices=sorted(SIZES))
    parser.add_argument("--state-dim", type=int, default=28, help="SafePointCircle: 28")
    parser.add_argument("--action-dim", type=int, default=2)
    parser.add_argument("--episode-len", type=int, default=200, help="the timestep table (max episode length)")
    parser.add_argument("--context", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50, help="timed gradient steps (after 5 warm-up steps)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    args = parser.parse_args(argv)

    import torch
    from fsrl.utils import DummyLogger
    from osrl.algorithms import CDT, CDTTrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    size = SIZES[args.size]
    model = CDT(state_dim=args.state_dim, action_dim=args.action_dim, max_action=1.0, seq_len=args.context,
                episode_len=args.episode_len, embedding_dim=size["embedding_dim"], num_layers=size["num_layers"],
                num_heads=size["num_heads"], attention_dropout=0.1, residual_dropout=0.1, embedding_dropout=0.1,
                time_emb=True, use_rew=True, use_cost=True, cost_transform=True, add_cost_feat=False,
                mul_cost_feat=False, cat_cost_feat=False, action_head_layers=1, cost_prefix=False, stochastic=True,
                init_temperature=0.1, target_entropy=-args.action_dim).to(args.device)
    trainer = CDTTrainer(model, None, logger=DummyLogger(), learning_rate=1e-4, weight_decay=1e-4,
                         betas=(0.9, 0.999), clip_grad=0.25, lr_warmup_steps=500, reward_scale=0.1, cost_scale=1.0,
                         loss_cost_weight=0.02, loss_state_weight=0.0, cost_reverse=False, no_entropy=False,
                         device=args.device)
    b, k = size["batch"], args.context
    generator = torch.Generator().manual_seed(0)

    def batch():
        return (torch.randn(b, k, args.state_dim, generator=generator),
                torch.rand(b, k, args.action_dim, generator=generator) * 2 - 1,
                torch.rand(b, k, generator=generator) * 10, torch.rand(b, k, generator=generator) * 50,
                torch.randint(0, args.episode_len, (b, k), generator=generator), torch.ones(b, k),
                torch.rand(b, generator=generator) * 50, (torch.rand(b, k, generator=generator) > 0.8).float())

    batches = [tuple(t.to(args.device) for t in batch()) for _ in range(8)]
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    model.train()
    for i in range(5):
        trainer.train_one_step(*batches[i % len(batches)])
    sync()
    start = time.perf_counter()
    for i in range(args.steps):
        trainer.train_one_step(*batches[i % len(batches)])
    sync()
    elapsed = time.perf_counter() - start
    print(json.dumps(dict(implementation="osrl-lib 0.1.0 (PyTorch)", torch=torch.__version__,
                          threads=torch.get_num_threads(), device=args.device, size=args.size, **size, context=k,
                          state_dim=args.state_dim, action_dim=args.action_dim, steps=args.steps, seconds=elapsed,
                          grad_steps_per_second=args.steps / elapsed)), flush=True)


if __name__ == "__main__":
    main()
