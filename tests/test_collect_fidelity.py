"""benchmarks/collect_fidelity.py: the ssljax-against-reference table from run folders."""

import json

import collect_fidelity
import pytest


def _ssljax_run(root, name, *, init, end, monitor, linear=None):
    d = root / name
    d.mkdir()
    (d / "summary.json").write_text(json.dumps({"knn_top1_init": init, "knn_top1": end}))
    rows = [{"step": 0, "knn_top1": init}]
    rows += [{"step": i + 1, "loss": 1.0, "proj_std_x_sqrt_d": m} for i, m in enumerate(monitor)]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if linear is not None:
        (d / "eval_linear.json").write_text(json.dumps({"linear_top1": linear}))


def _torch_run(root, name, *, init, end, monitor, linear):
    steps = list(range(1, len(monitor) + 1))
    curve = {"step": steps, "loss": [2.0] * len(steps), "proj_std_x_sqrt_d": monitor}
    result = {"knn_top1_init": init, "knn_top1": end, "linear_top1": linear, "curve": curve}
    (root / f"{name}.json").write_text(json.dumps(result))


def test_means_spread_monitor_and_difference_to_the_reference(tmp_path, capsys):
    _ssljax_run(tmp_path, "ssljax.byol.s0", init=0.27, end=0.35, monitor=[0.8, 0.6, 0.7])
    _ssljax_run(
        tmp_path, "ssljax.byol.s1", init=0.28, end=0.33, monitor=[0.9, 0.5, 0.8], linear=0.38
    )
    _ssljax_run(tmp_path, "frozen.byol.s0", init=0.27, end=0.30, monitor=[0.9])
    _torch_run(tmp_path, "torch.byol.s0", init=0.26, end=0.36, monitor=[0.7, 0.9], linear=0.37)
    _torch_run(tmp_path, "torch.byol.s1", init=0.25, end=0.34, monitor=[0.6, 0.8], linear=0.35)
    out, png = tmp_path / "fid.json", tmp_path / "curves.png"
    collect_fidelity.main([str(tmp_path), "--out", str(out), "--plot", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(out.read_text())
    rows = {(r["impl"], r["seed"]): r for r in data["rows"]}
    assert rows[("ssljax", 1)]["monitor_min"] == 0.5 and rows[("ssljax", 1)]["monitor_end"] == 0.8
    assert rows[("ssljax", 1)]["linear_top1"] == 0.38 and "linear_top1" not in rows[("ssljax", 0)]
    assert rows[("torch", 0)]["monitor_min"] == 0.7 and rows[("torch", 0)]["monitor_end"] == 0.9
    means = {g["impl"]: g for g in data["means"]}
    assert means["ssljax"]["knn"] == pytest.approx(0.34)
    assert means["ssljax"]["knn_spread"] == pytest.approx(0.02)
    assert means["ssljax"]["gain"] == pytest.approx((0.08 + 0.05) / 2)
    assert means["ssljax"]["linear"] == pytest.approx(0.38)
    assert means["ssljax"]["linear_seeds"] == [1]
    assert means["torch"]["knn"] == pytest.approx(0.35) and "knn_diff" not in means["torch"]
    assert means["ssljax"]["knn_diff"] == pytest.approx(-0.01)
    assert means["ssljax:frozen"]["knn_diff"] == pytest.approx(0.30 - 0.35)
    printed = capsys.readouterr().out
    assert "kNN diff -1.00" in printed and "0.50 / 0.80" in printed


def test_long_method_names_keep_the_columns_apart(tmp_path, capsys):
    name = "simsiam_b64_4ep_long"
    _ssljax_run(tmp_path, f"ssljax.{name}.s0", init=0.3, end=0.4, monitor=[0.9])
    _torch_run(tmp_path, f"torch.{name}.s0", init=0.3, end=0.41, monitor=[0.9], linear=0.4)
    collect_fidelity.main([str(tmp_path), "--out", str(tmp_path / "fid.json")])
    printed = capsys.readouterr().out.splitlines()
    row = next(line for line in printed if line.startswith("ssljax") and name in line)
    assert f"{name}  " in row  # at least two spaces between the name and the seed column
    assert f"  {name}  kNN 40.00%" in "\n".join(printed)


def test_paired_differences_per_seed_and_the_reference_from_ssljax_init(tmp_path, capsys):
    # ssljax - reference per seed: -0.01 and -0.03; the reference from ssljax's weights sits
    # between them: ssljax - it = -0.01 and -0.01 (sd 0), it - reference = 0 and -0.02.
    for seed, (s_end, t_end, j_end) in enumerate([(0.40, 0.41, 0.41), (0.42, 0.45, 0.43)]):
        _ssljax_run(tmp_path, f"ssljax.m.s{seed}", init=0.30, end=s_end, monitor=[0.9])
        _torch_run(tmp_path, f"torch.m.s{seed}", init=0.32, end=t_end, monitor=[0.9], linear=0.4)
        _torch_run(
            tmp_path, f"torch_jaxinit.m.s{seed}", init=0.30, end=j_end, monitor=[0.9], linear=0.4
        )
        path = tmp_path / f"torch_jaxinit.m.s{seed}.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "initial_weights": "ssljax"}))
    _torch_run(tmp_path, "torch.m.s7", init=0.3, end=0.9, monitor=[0.9], linear=0.4)  # unpaired
    _torch_run(tmp_path, "torch_both.other.s0", init=0.3, end=0.4, monitor=[0.9], linear=0.4)
    path = tmp_path / "torch_both.other.s0.json"
    both = {**json.loads(path.read_text()), "initial_weights": "ssljax", "inputs": "ssljax"}
    path.write_text(json.dumps(both))
    out = tmp_path / "fid.json"
    collect_fidelity.main([str(tmp_path), "--out", str(out)])
    data = json.loads(out.read_text())
    impls = {(r["method"], r["impl"]) for r in data["rows"]}
    assert impls == {
        ("m", "ssljax"),
        ("m", "torch"),
        ("m", "torch:ssljax_init"),
        ("other", "torch:ssljax_init+inputs"),
    }
    pairs = {(p["a"], p["b"]): p for p in data["paired"] if p["method"] == "m"}
    assert set(pairs) == {
        ("ssljax", "torch:ssljax_init"),
        ("ssljax", "torch"),
        ("torch:ssljax_init", "torch"),
    }
    p = pairs["ssljax", "torch"]
    assert p["seeds"] == [0, 1]  # seed 7 ran on one side only
    assert p["knn_diffs"] == pytest.approx([-0.01, -0.03])
    assert p["knn"]["mean"] == pytest.approx(-0.02)
    assert p["knn"]["sd"] == pytest.approx(0.02 / 2**0.5)
    assert p["knn"]["t"] == pytest.approx(-0.02 / (0.02 / 2**0.5 / 2**0.5))
    assert p["init"]["mean"] == pytest.approx(-0.02)
    assert p["gain"]["mean"] == pytest.approx(0.0)
    same_init = pairs["ssljax", "torch:ssljax_init"]
    assert same_init["knn"]["mean"] == pytest.approx(-0.01)
    assert same_init["init_diffs"] == pytest.approx([0.0, 0.0])
    assert same_init["knn"]["sd"] == pytest.approx(0.0) and same_init["knn"]["t"] is None
    assert pairs["torch:ssljax_init", "torch"]["knn_diffs"] == pytest.approx([0.0, -0.02])
    printed = capsys.readouterr().out
    assert "m: ssljax - torch over seeds [0, 1]: kNN end -2.00 sd 1.41 t -2.0 (1 df)" in printed


def test_a_rerun_with_another_thread_count_is_a_group_of_its_own(tmp_path, capsys):
    # Seed 1 twice on ssljax's weights and inputs, with 2 threads and with 1: the 1-thread run
    # is a rounding-only control, paired with the 2-thread run, not a second seed-1 row that
    # overwrites the first.
    for name, seed, threads, end in (("a", 1, 2, 0.45), ("a", 3, 2, 0.44), ("b", 1, 1, 0.47)):
        stem = f"torch_{name}.m.s{seed}"
        _torch_run(tmp_path, stem, init=0.3, end=end, monitor=[0.9], linear=0.4)
        path = tmp_path / f"{stem}.json"
        extra = {"initial_weights": "ssljax", "inputs": "ssljax", "threads": threads}
        path.write_text(json.dumps({**json.loads(path.read_text()), **extra}))
    _ssljax_run(tmp_path, "ssljax.m.s1", init=0.3, end=0.44, monitor=[0.9])
    out = tmp_path / "fid.json"
    collect_fidelity.main([str(tmp_path), "--out", str(out)])
    data = json.loads(out.read_text())
    groups = {(r["impl"], r["seed"]): r["knn_top1"] for r in data["rows"]}
    assert groups == {
        ("ssljax", 1): 0.44,
        ("torch:ssljax_init+inputs", 1): 0.45,
        ("torch:ssljax_init+inputs", 3): 0.44,
        ("torch:ssljax_init+inputs@1thread", 1): 0.47,
    }
    pairs = {(p["a"], p["b"]): p["knn_diffs"] for p in data["paired"]}
    control = pairs["torch:ssljax_init+inputs", "torch:ssljax_init+inputs@1thread"]
    assert control == pytest.approx([-0.02])
    assert pairs["ssljax", "torch:ssljax_init+inputs"] == pytest.approx([-0.01])


def test_one_thread_count_everywhere_keeps_the_group_names():
    rows = [
        {"impl": "torch", "method": "m", "seed": 0, "threads": 2},
        {"impl": "torch", "method": "m", "seed": 1, "threads": 2},
        {"impl": "torch:ssljax_init", "method": "m", "seed": 0, "threads": 1},
        {"impl": "ssljax", "method": "m", "seed": 0},
    ]
    collect_fidelity.split_by_threads(rows)
    assert [r["impl"] for r in rows] == ["torch", "torch", "torch:ssljax_init", "ssljax"]
