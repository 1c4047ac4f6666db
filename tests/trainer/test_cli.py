import pytest

from monosemantic.cli import SUBCOMMANDS, build_parser, config_from_args, main


@pytest.mark.parametrize("command", [*SUBCOMMANDS, "serve"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: monosemantic" in capsys.readouterr().out


def test_flags_map_onto_the_typed_config():
    args = build_parser().parse_args(
        [
            "train-sae",
            "--preset",
            "tiny",
            "--variant",
            "topk",
            "--k",
            "8",
            "--set",
            "sae.lr=0.0003",
            "--out-dir",
            "/tmp/x",
        ]
    )
    cfg = config_from_args(args)
    assert (cfg.sae.variant, cfg.sae.k, cfg.sae.lr, cfg.out_dir) == ("topk", 8, 3e-4, "/tmp/x")
    assert cfg.sae.d_in == cfg.model.d_mlp
    device_args = build_parser().parse_args(["train-sae", "--preset", "tiny", "--set", "device=cuda"])
    assert config_from_args(device_args).device == "cuda"


def test_set_of_a_top_level_field_survives_its_flag_not_given():
    """`--set run_name=x` (the form the error message offers) and `--set sae_path=...` were
    overwritten by the absent --run-name / --sae flags' None; a given flag still wins."""
    args = build_parser().parse_args(
        ["train-sae", "--preset", "tiny", "--set", "run_name=mine", "--set", "sae_path=/tmp/sae_x"]
    )
    cfg = config_from_args(args)
    assert (cfg.run_name, cfg.sae_path, cfg.slug) == ("mine", "/tmp/sae_x", "mine")
    assert str(cfg.sae_dir) == "/tmp/sae_x"
    flag = build_parser().parse_args(
        ["analyze", "--preset", "tiny", "--set", "run_name=a", "--run-name", "b"]
    )
    assert config_from_args(flag).run_name == "b"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["corpus", "--preset", "huge"], "unknown preset 'huge'"),
        (["train-sae", "--preset", "tiny", "--variant", "gated"], "unknown SAE variant 'gated'"),
        (["corpus", "--preset", "tiny", "--set", "sae.colour=1"], "unknown sae setting(s): colour"),
        (["corpus", "--preset", "tiny", "--set", "colour=1"], "unknown setting 'colour'"),
        (
            ["corpus", "--preset", "tiny", "--source", "/nonexistent/corpus.txt", "--out-dir", "/tmp/never"],
            "corpus source /nonexistent/corpus.txt does not exist",
        ),
        (["train-lm", "--preset", "tiny", "--out-dir", "/nonexistent/run"], "no tokenised corpus"),
        (["serve", "--db", "/nonexistent/monosemantic.db"], "no database at /nonexistent/monosemantic.db"),
        # A target L0 no SAE can reach is refused before anything is read or written.
        (["train-sae", "--preset", "tiny", "--target-l0", "0"], "sae.target_l0 0.0 cannot be reached"),
        (["train-sae", "--preset", "tiny", "--target-l0", "256"], "it must be in (0, d_sae = 256)"),
        (
            ["train-sae", "--preset", "tiny", "--variant", "topk", "--target-l0", "8"],
            "topk sets its L0 with sae.k",
        ),
        (
            ["train-sae", "--preset", "tiny", "--activations", "/nonexistent/acts.npy"],
            "no activations at /nonexistent/acts.npy",
        ),
    ],
)
def test_bad_input_is_a_one_line_error(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
