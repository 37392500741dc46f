import os

# Triton kernels run on the CPU through the interpreter; it must be set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_thread():
    """Small problems: one thread is faster than two and leaves the other core free (use with
    `pytestmark = pytest.mark.usefixtures("one_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits_triton_repo(tmp_path_factory):
    """`ldd-fast export --model digits --schedule S --triton-repo R` once per session (S: UniPC-3, logSNR, NFE 4;
    backend onnxruntime, the graph inside R/ldd_sampler/1): the exporter is the slow part of the serving tests, so
    test_serving.py reads these files and test_serving_server.py serves this graph."""
    from ldd_fast.cli import main
    import ldd_fast as lf

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp("digits_triton")
        den = lf.zoo.load("digits")
        lf.discretize(den.noise, 4, "logsnr").replace(solver="unipc", order=3).save(folder / "schedule.json")
        root = str(folder / "repo")
        assert main(["export", "--model", "digits", "--schedule", str(folder / "schedule.json"), "--triton-repo",
                     root]) == 0
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.fixture(scope="session")
def digits_graph(digits_triton_repo):
    """The session's exported digits graph as to_onnx returns it (an OnnxExport), for write_repository(graph=)."""
    from ldd_fast.export import OnnxExport
    from ldd_fast.export.onnx_export import artifact_files, read_metadata

    path = os.path.join(digits_triton_repo, "ldd_sampler", "1", "sampler.onnx")
    files, meta = artifact_files(path), read_metadata(path)
    return OnnxExport(path, files[1] if len(files) > 1 else None, meta["nfe"], ["z", "cond"], True, False,
                      meta["dtype"], 0, 0, 0, {}, meta)
