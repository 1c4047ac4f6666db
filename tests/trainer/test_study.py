"""The study's configuration: sizes and model B from the command line, and what each stage runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from monosemantic.cli import build_parser, config_from_args, main
from monosemantic.study import match_pairs, model_b_config, size_configs, yardstick_config
from trainer.config import preset_config


def test_a_comma_list_of_sizes_and_a_seed_for_model_b() -> None:
    args = build_parser().parse_args(
        ["analyze", "--preset", "tiny", "--d-sae", "256,64,128", "--seed-b", "7", "--out-dir", "/tmp/s"]
    )
    cfg = config_from_args(args)
    assert (cfg.sae.d_sae, cfg.study.sizes, cfg.study.seed_b) == (256, (256, 64, 128), 7)
    assert [c.sae.d_sae for c in size_configs(cfg)] == [256, 64, 128]
    assert [c.slug for c in size_configs(cfg)] == ["tiny-paper-256", "tiny-paper-64", "tiny-paper-128"]
    cfg_b = model_b_config(cfg)
    assert cfg_b is not None
    assert Path(cfg_b.out_dir) == Path("/tmp/s/s-b") and cfg_b.database_url == cfg.database_url
    assert (cfg_b.lm.seed, cfg_b.harvest.seed, cfg_b.sae.seed, cfg_b.sae.d_sae) == (7, 7, 7, 256)
    assert cfg_b.slug == "tiny-paper-256-b" and cfg_b.study.sizes == ()
    assert match_pairs(cfg) == [
        ("tiny-paper-256", "tiny-paper-64"),
        ("tiny-paper-256", "tiny-paper-128"),
        ("tiny-paper-64", "tiny-paper-128"),
        ("tiny-paper-256", "tiny-paper-256-b"),
        ("s-neurons", "s-b-neurons"),
    ]


def test_one_size_and_no_seed_is_a_plain_run() -> None:
    cfg = config_from_args(build_parser().parse_args(["train-sae", "--preset", "tiny", "--d-sae", "96"]))
    assert cfg.sae.d_sae == 96 and cfg.study.sizes == ()
    assert size_configs(cfg) == [cfg] and model_b_config(cfg) is None and match_pairs(cfg) == []


def test_the_study_preset_builds_sizes_and_model_b() -> None:
    cfg = preset_config("study")
    assert cfg.study.sizes == (512, 1024, 2048, 4096) and cfg.study.seed_b == 1
    assert len(match_pairs(cfg)) == 6 + 1 + 2  # every pair of sizes; the yardstick; A-B features, neurons
    assert ("study-topk-4096", "study-topk-4096-seed1") in match_pairs(cfg)


def test_the_yardstick_is_a_second_sae_of_the_main_size_on_model_a() -> None:
    args = build_parser().parse_args(
        ["train-sae", "--preset", "tiny", "--d-sae", "256,64", "--yardstick-seed", "5", "--out-dir", "/tmp/s"]
    )
    cfg = config_from_args(args)
    cfg_y = yardstick_config(cfg)
    assert (
        cfg_y is not None
        and yardstick_config(config_from_args(build_parser().parse_args(["train-sae"]))) is None
    )
    assert (cfg_y.sae.seed, cfg_y.sae.d_sae, cfg_y.out_dir, cfg_y.model_name) == (
        5,
        256,
        "/tmp/s",
        cfg.model_name,
    )
    assert cfg_y.sae_dir == Path("/tmp/s/sae_paper_256_seed5") and cfg_y.slug == "tiny-paper-256-seed5"
    assert cfg_y.activations_dir == cfg.activations_dir and cfg_y.lm_dir == cfg.lm_dir
    assert ("tiny-paper-256", "tiny-paper-256-seed5") in match_pairs(cfg)


def test_the_paper_preset_makes_the_study_comparisons_with_the_paper_recipe() -> None:
    cfg = preset_config("paper")
    assert cfg.sae.d_sae == 4096 and cfg.sae.variant == "paper"
    assert cfg.study.sizes == (512, 1024, 2048, 4096, 8192) and cfg.study.seed_b == 1
    assert len(match_pairs(cfg)) == 10 + 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["train-sae", "--preset", "tiny", "--d-sae", "64,x"],
            "expected a number of features or a comma list",
        ),
        (["train-sae", "--preset", "tiny", "--d-sae", "64,64"], "study.sizes must not repeat a size"),
        (["match", "--db", "/nonexistent/m.db", "--run", "a", "--run", "b"], "no database at"),
        (["match", "--db", "/nonexistent/m.db", "--run", "a"], "match takes two runs"),
    ],
)
def test_bad_study_input_is_a_one_line_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
