import json
import os

import pytest
import torch

import ldd_fast as lf
from ldd_fast.schedule import ScheduleError

NOISES = [lf.EDM(), lf.VPLinear(), lf.VPCosine(), lf.VPDiscrete.linear()]


@pytest.mark.parametrize("noise", NOISES, ids=repr)
@pytest.mark.parametrize("kind", lf.schedule.KINDS)
def test_discretize_is_monotone_with_exact_ends(noise, kind):
    s = lf.discretize(noise, 6, kind)
    assert s.nfe == 6 and s.t.numel() == 7 and s.layout == "multistep"
    assert (s.t[1:] < s.t[:-1]).all()
    assert s.t[0].item() == noise.t_max and s.t[-1].item() == noise.t_min
    assert torch.equal(s.t_eval, s.t[:-1])


def test_discretisation_formulas():
    noise = lf.VPLinear()
    lam = noise.lam(lf.discretize(noise, 8, "logsnr").t)
    assert torch.allclose(lam.diff(), lam.diff()[0].expand(8), rtol=1e-9)
    tq = lf.discretize(noise, 8, "time_quadratic").t
    assert torch.allclose(tq.sqrt().diff(), tq.sqrt().diff()[0].expand(8), rtol=1e-9)
    # EDM / Karras et al. 2022 eq. 5 with rho = 7, written out.
    edm = lf.EDM()
    i = torch.arange(7, dtype=torch.float64)
    karras = (80 ** (1 / 7) + i / 6 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert torch.allclose(lf.discretize(edm, 6, "edm").t, karras, rtol=1e-12)


def test_heun_layout_and_final_zero():
    s = lf.discretize(lf.EDM(), 5, "edm", solver="heun")
    assert s.t.numel() == 4 and s.layout == "heun"
    assert torch.equal(s.t_eval, s.t[[0, 1, 1, 2, 2]])
    with pytest.raises(ValueError, match="odd nfe"):
        lf.discretize(lf.EDM(), 4, "edm", solver="heun")
    z = lf.discretize(lf.EDM(), 4, "edm", final="zero")
    assert z.t.numel() == 5 and z.t[-1] == 0 and z.t[-2] == 0.002 and torch.equal(z.t_eval, z.t[:-1])


@pytest.mark.parametrize("noise", NOISES, ids=repr)
def test_json_round_trip_is_exact(noise, tmp_path):
    s = lf.discretize(noise, 5, "edm")
    s.metrics["rmse"] = 0.123456789
    s = s.replace(t_eval=s.t_eval * (1 - 1e-3),  # learned-like network times
                  solver="unipc", order=3, variant="bh1", fingerprint="ab" * 32)
    path = tmp_path / "s.json"
    s.save(path)
    back = lf.Schedule.load(path)
    assert torch.equal(back.t, s.t) and torch.equal(back.t_eval, s.t_eval)
    assert back.to_dict() == s.to_dict()
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


def _write(tmp_path, d):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    return path


@pytest.mark.parametrize("change, match", [
    (lambda d: d.update(t=[80.0, float("nan"), 1.0, 0.002]), r"field 't': t\[1\] must be finite, got nan"),
    (lambda d: d.update(t=[80.0, 1.0, 10.0, 0.002]), "strictly decreasing"),
    (lambda d: d.update(t_eval=[80.0, 10.0]), "do not fit"),
    (lambda d: d.update(t=[100.0, 10.0, 1.0, 0.002]), "outside the noise schedule's range"),
    (lambda d: d.update(t_eval=[80.0, 10.0, 1e-4]), "field 't_eval'"),
    (lambda d: d.update(format_version=99), "format_version"),
    (lambda d: d.pop("t"), "field 't': missing"),
    (lambda d: d.update(noise={"type": "Nope"}), "field 'noise'"),
    (lambda d: d.update(nfe=7), "field 'nfe'"),
    (lambda d: d.update(solver="heun"), "do not fit solver 'heun'"),
    (lambda d: d.update(solver="rk45"), "unknown solver"),
    (lambda d: d.update(final="somewhere"), "field 'final'"),
])
def test_load_rejects_bad_files_naming_the_field(tmp_path, change, match):
    d = lf.discretize(lf.EDM(), 3, "edm").to_dict()
    change(d)
    with pytest.raises(ValueError, match=match):
        lf.Schedule.load(_write(tmp_path, d))


def test_load_errors_for_missing_and_malformed_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="schedule file not found"):
        lf.Schedule.load(tmp_path / "nope.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ScheduleError, match="not valid JSON"):
        lf.Schedule.load(tmp_path / "x.json")


def test_failed_save_keeps_the_old_file(tmp_path):
    s = lf.discretize(lf.EDM(), 3, "edm")
    path = tmp_path / "s.json"
    s.save(path)
    before = path.read_text()
    s.metrics["bad"] = object()  # not JSON-serialisable
    with pytest.raises(ScheduleError, match="field 'metrics'"):
        s.save(path)
    assert path.read_text() == before and os.listdir(tmp_path) == ["s.json"]


def test_discretize_bad_input():
    with pytest.raises(ValueError, match="unknown discretisation kind"):
        lf.discretize(lf.EDM(), 4, "cosine")
    with pytest.raises(ValueError, match="positive integer"):
        lf.discretize(lf.EDM(), 0, "edm")
    with pytest.raises(ValueError, match="unknown solver"):
        lf.discretize(lf.EDM(), 4, "edm", solver="rk4")
    with pytest.raises(TypeError, match="NoiseSchedule"):
        lf.discretize("edm", 4, "edm")
