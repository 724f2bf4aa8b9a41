"""ECO x4 with EDSR-baseline, started from the ECO x2 run's weights (ECO's x3/x4 recipe).

    # 1. the x4 teacher: a vanilla x4 run (itself started from the vanilla x2 run)
    python train.py --config configs/edsr_div2k_x4.py --workdir runs/edsr_div2k_x4 \
        --config.train.init_from=runs/edsr_div2k_x2
    # 2. ECO x2 (configs/eco_edsr_x2.py), then ECO x4 from its weights with the x4 teacher
    python train.py --config configs/eco_edsr_x4.py --workdir runs/eco_edsr_x4 \
        --config.train.init_from=runs/eco_edsr_x2 --config.eco.teacher_workdir=runs/edsr_div2k_x4
    python eval.py --workdir runs/eco_edsr_x4 --benchmark_root /data/benchmark
    # from scratch: --config.train.init_from=

ECO initialises x3 and x4 from the x2 checkpoint of the same method (ECO from ECO, vanilla from
vanilla): every tensor whose name and shape match is copied, upsampler tensors of another shape
or missing at x2 are skipped (the run prints the list), the optimizer starts fresh. The rest is
eco_edsr_x2's official recipe (LAMB 3.2e-3 cosine to 0, L1 x 255, batch 128, 125k steps) with
HR patches 192 (LR 48) and crop 4. Reference: ECO EDSR x4 reports 32.59 dB (Y) on Set5
against 32.50 dB for its vanilla twin. Runtime and result of this config: not measured yet.
"""

from msjax.configs._sr_div2k import div2k, eco


def get_config():
    c = eco(div2k("edsr", 4))
    c.train.init_from = "runs/eco_edsr_x2"   # ECO x2's run; '' trains from scratch
    c.eco.teacher_workdir = "runs/edsr_div2k_x4"  # the vanilla x4 run
    c.log.eval_every = 250                   # ECO validates x3 / x4 every 2000 // 8 steps
    return c
