"""Each suite's PE defaults against the code it reproduces (issue 26), with hand-computed numbers.

ppl and timing follow DAPE's GPT-NeoX code and 125M configs: T5 scaled by sqrt(d_head) with a
``xavier_normal_`` table, FIRE's ``L0 = noise_seq_length // 2`` per training length, DAPE-FIRE's inner
FIRE as wide as DAPE's MLP. CHE follows DeepMind's code where it defines something: the ``dape``
task group (DAPE's 14 tasks), fp32 training, FIRE's class default where nothing defines FIRE.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lenbench.config import load_suite
from lenbench.errors import LenbenchError
from lenbench.pe import PEContext, parse_pe_spec, pe_class
from lenbench.pe.bias import FIRE, T5Bias, fire_input
from lenbench.pe.dape import DAPEFIRE, DAPEV2FIRE
from lenbench.pe.defaults import dape_neox_l0, split_rules, with_length_defaults
from lenbench.pe.registry import resolve_pes
from lenbench.suites.che import config as che_config
from lenbench.suites.ppl import config as ppl_config
from lenbench.suites.timing import config as timing_config

ROOT = Path(__file__).resolve().parent.parent


def lm(heads: int = 12, dim: int = 768) -> PEContext:
    return PEContext(dim=dim, heads=heads, causal=True, train_length=512, max_length=8192)


# --- T5: NeoX ParallelRelativePositionBias (scale sqrt(d_head), xavier_normal_ init) ---------------------


def test_t5_initial_bias_has_neox_scale() -> None:
    """125M shape: 32 buckets x 12 heads, d_head 64. xavier_normal_ std = sqrt(2 / (12 + 32)) = 0.21320,
    times sqrt(64) = 8: initial bias std 1.7056 logits (docs/pe.md §10: ~1.7). 30 tables = 11520 draws,
    so the sample std is within ~1% of it; the earlier form's bias std is 0.02, 85x smaller."""
    torch.manual_seed(0)
    tables = [T5Bias(lm()) for _ in range(30)]
    table_std = torch.cat([t.table.detach().flatten() for t in tables]).std().item()
    assert table_std == pytest.approx(math.sqrt(2 / 44), rel=0.03)
    pos = torch.arange(200)
    bias = torch.cat([t.bias(pos, pos)[:, -1].flatten() for t in tables[:1]])  # last row: every bucket seen
    assert tables[0].scale == 8.0
    assert torch.allclose(bias, 8.0 * tables[0].table.detach()[tables[0].bucket(pos[-1:], pos)[0]].t().flatten())
    old = [T5Bias(lm(), scale_by_head_dim=False, init="normal") for _ in range(30)]
    assert old[0].scale == 1.0
    assert torch.cat([t.table.detach().flatten() for t in old]).std().item() == pytest.approx(0.02, rel=0.03)
    with pytest.raises(LenbenchError, match="init must be one of"):
        T5Bias(lm(), init="zeros")


def test_t5_score_mod_carries_the_scale() -> None:
    """FlexAttention's score_mod adds the same scaled bias as bias() (head dim 16 -> x4)."""
    pe = T5Bias(lm(heads=2, dim=32))
    mod = pe.score_mod()
    q, k = torch.tensor(40), torch.tensor(3)
    for h in (0, 1):
        got = mod(torch.tensor(0.0), torch.tensor(0), torch.tensor(h), q, k)
        assert got.item() == pytest.approx(pe.bias(torch.arange(41), torch.arange(41))[h, 40, 3].item())
        assert got.item() == pytest.approx(4.0 * pe.table[pe.bucket(q[None], k[None])[0, 0], h].item())


# --- FIRE's L0 as DAPE's NeoX configs derive it --------------------------------------------------------


def test_dape_neox_l0_from_the_configs() -> None:
    """V1 configs: noise_seq_length 128 at seq-length 512, halved in FIRE.__init__ -> 64; the same ratio
    at 128 -> 16 and 1024 -> 128. V2 configs: noise_seq_length 512 at 512 -> 256."""
    from lenbench.pe.bias import FIRE as fire
    assert [dape_neox_l0(fire, t) for t in (128, 512, 1024)] == [16, 64, 128]
    assert dape_neox_l0(DAPEFIRE, 512) == 64
    assert [dape_neox_l0(DAPEV2FIRE, t) for t in (128, 512)] == [64, 256]


def test_fire_normaliser_interpolates_from_l0() -> None:
    """With L0 = 64 (DAPE's NeoX run at 512) the normaliser is psi(max(i, 64)): at i = 32, distance 32:
    log(1 + 3.2) / log(1 + 6.4) = 1.43508 / 2.00148 = 0.71701; at i = 100, distance 100: 1 (progressive);
    with the class default 512 the same i = 100 gives log(11) / log(52.2) = 0.60661."""
    c = torch.tensor(0.1)
    x = fire_input(torch.tensor([32.0, 100.0]), torch.tensor([0.0, 0.0]), c, torch.tensor(64.0), True, 1e-6)
    assert x.tolist() == pytest.approx([0.71701, 1.0], abs=1e-5)
    x512 = fire_input(torch.tensor(100.0), torch.tensor(0.0), c, torch.tensor(512.0), True, 1e-6)
    assert x512.item() == pytest.approx(math.log(11) / math.log(52.2), abs=1e-5)
    assert FIRE(lm(), l0=64).threshold().item() == 64.0


def test_length_rules_resolve_to_numbers_per_training_length() -> None:
    plain, rules = split_rules({"l0": "dape-neox", "hidden": 32})
    assert plain == {"hidden": 32} and rules == {"l0": "dape-neox"}
    specs = resolve_pes("fire,dape-fire,dape-v2-fire,alibi,fire:l0=512", plain)
    at = {t: [str(s) for s in with_length_defaults(specs, rules, t)] for t in (128, 512)}
    assert at[128] == ["fire:l0=16", "dape-fire:hidden=32,l0=16", "dape-v2-fire:hidden=32,l0=64", "alibi",
                       "fire:l0=512"]
    assert at[512] == ["fire:l0=64", "dape-fire:hidden=32,l0=64", "dape-v2-fire:hidden=32,l0=256", "alibi",
                       "fire:l0=512"]


def test_ppl_and_timing_cells_carry_the_neox_l0() -> None:
    """The ppl paper profile trains at 128 and 512: FIRE's cells say l0=16 and l0=64; timing (trained
    length 512) l0=64. The quick profile (128) l0=16."""
    cells = ppl_config.expand(load_suite("ppl"), "paper", {"grid": {"pes": "fire,t5", "datasets": "default"}})
    got = {(c.config["pe"], c.config["train"]["length"]) for c in cells}
    assert got == {("fire:l0=16", 128), ("fire:l0=64", 512), ("t5", 128), ("t5", 512)}
    quick = ppl_config.expand(load_suite("ppl"), "quick", {"grid": {"pes": "dape-fire"}})
    assert {c.config["pe"] for c in quick} == {"dape-fire:l0=16"}
    tcells = timing_config.expand(load_suite("timing"), "quick", {"grid": {"pes": "fire,rope"}})
    assert {pe for c in tcells for pe in c.config["pes"]} == {"fire:l0=64", "rope", "rope:base=10001"}  # + control


# --- DAPE-FIRE: one mlp_width for both MLPs (FIRE_C) -----------------------------------------------------


def test_dape_fire_inner_width_is_hidden() -> None:
    """FIRE_C sizes Linear(1, mlp_width) and Linear(2h, mlp_width) with one value. At h = 8, hidden 64:
    FIRE MLP 1*64 + 64 + 64*8 + 8 = 648, plus c and L_mult = 650; DAPE MLP 16*64 + 64 + 64*8 + 8 = 1608."""
    ctx = PEContext(dim=256, heads=8, causal=False, train_length=120, max_length=1500)
    pe = DAPEFIRE(ctx, hidden=64)
    assert pe.base.fc1.out_features == 64 and pe.fc1.out_features == 64
    assert sum(p.numel() for p in pe.base.parameters()) == 650
    assert sum(p.numel() for p in pe.parameters()) == 650 + 1608
    old = DAPEFIRE(ctx, hidden=64, fire_width=32)
    assert old.base.fc1.out_features == 32
    assert DAPEV2FIRE(ctx, hidden=16).base.fc1.out_features == 16
    spec = parse_pe_spec("dape-fire:hidden=64,fire_width=32")
    assert pe_class(spec)(ctx, **spec.options).base.fc2.in_features == 32
    with pytest.raises(LenbenchError, match="FIRE width"):
        DAPEFIRE(ctx, fire_width=0)


# --- CHE: DAPE's 14 tasks, fp32, DeepMind's defaults where they exist ---------------------------------


def test_dape_task_group_is_dapes_fourteen() -> None:
    """DAPE Table 2 / Table 4: Ruoss et al.'s 15 tasks without binary_multiplication."""
    tasks = che_config.resolve_tasks("dape")
    assert len(tasks) == 14 and "binary_multiplication" not in tasks
    assert set(tasks) | {"binary_multiplication"} == set(che_config.resolve_tasks("all"))
    with pytest.raises(LenbenchError):
        che_config.resolve_tasks("dape,nonsense")


def test_che_paper_profile_runs_dapes_tasks_in_fp32() -> None:
    cells = che_config.expand(load_suite("che"), "paper", {"grid": {"pes": "fire,t5", "seeds": "0"}})
    assert {c.config["task"] for c in cells} == set(che_config.resolve_tasks("dape"))
    assert {c.config["train"]["precision"] for c in cells} == {"fp32"}
    assert {c.config["pe"] for c in cells} == {"fire", "t5"}  # no DeepMind FIRE: the class default l0=512
    quick = che_config.expand(load_suite("che"), "quick", {"grid": {"pes": "alibi"}})
    assert {c.config["train"]["precision"] for c in quick} == {"fp32"}
    assert che_config.CheTrain().precision == "fp32"


def test_suite_yamls_name_published_and_reconstructed_items() -> None:
    """The paper profiles say what they are (issue 26 item 2): the YAML lists the two apart."""
    text = (ROOT / "suites" / "che.yaml").read_text()
    assert "# - published (DAPE App. D" in text and "# - reconstruction (DAPE publishes none of these" in text
    for source in ("init_L // 2", "xavier_normal_", "one mlp_width in FIRE_C"):
        assert source in (ROOT / "suites" / "ppl.yaml").read_text()
