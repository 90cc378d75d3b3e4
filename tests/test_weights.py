"""Checkpoint download and verification against a real HTTP server on loopback."""

import hashlib
import http.server
import threading

import pytest
from typer.testing import CliRunner

from segsearch.errors import ChecksumMismatch, WeightsUnavailable
from segsearch.models.known import SAM_SHAPES_TINY_CONFIG
from segsearch.models.registry import SamSpec, Weights, register_sam, sam_config
from segsearch.models.weights import ensure_weights

from segsearch.cli import app

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB fake checkpoint
GOOD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class Server:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests.append({"path": self.path, "range": self.headers.get("Range")})
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(body):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def weights(server, name="fake.pth", sha=GOOD_SHA):
    return Weights(name, sha, f"{server.url}/{name}", len(PAYLOAD))


def test_download_verifies_and_places_file(server, tmp_path):
    server.files["/fake.pth"] = PAYLOAD
    path = ensure_weights(weights(server), tmp_path, progress=False)
    assert path == tmp_path / "fake.pth" and path.read_bytes() == PAYLOAD
    assert not (tmp_path / "fake.pth.part").exists()
    # second call: verified from the stamp, no new request
    n = len(server.requests)
    assert ensure_weights(weights(server), tmp_path, progress=False) == path
    assert len(server.requests) == n


def test_corrupt_download_is_discarded(server, tmp_path):
    server.files["/fake.pth"] = PAYLOAD[:-1] + b"X"
    with pytest.raises(ChecksumMismatch, match="does not match"):
        ensure_weights(weights(server), tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_or_partial_local_file_is_refetched(server, tmp_path):
    server.files["/fake.pth"] = PAYLOAD
    (tmp_path / "fake.pth").write_bytes(PAYLOAD[: len(PAYLOAD) // 3])  # truncated copy
    path = ensure_weights(weights(server), tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD
    # a file changed after verification is re-hashed (its stamp no longer matches) and replaced
    path.write_bytes(b"tampered" + PAYLOAD[8:])
    assert ensure_weights(weights(server), tmp_path, progress=False).read_bytes() == PAYLOAD


def test_interrupted_download_resumes_with_range(server, tmp_path):
    server.files["/fake.pth"] = PAYLOAD
    (tmp_path / "fake.pth.part").write_bytes(PAYLOAD[:300_000])
    path = ensure_weights(weights(server), tmp_path, progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.requests[-1]["range"] == "bytes=300000-"


def test_bad_partial_file_falls_back_to_full_download(server, tmp_path):
    server.files["/fake.pth"] = PAYLOAD
    (tmp_path / "fake.pth.part").write_bytes(b"garbage" * 1000)
    assert ensure_weights(weights(server), tmp_path, progress=False).read_bytes() == PAYLOAD
    assert server.requests[-1]["range"] is None


def test_missing_remote_and_offline_errors_name_the_file(server, tmp_path):
    with pytest.raises(WeightsUnavailable) as e:
        ensure_weights(weights(server, "absent.pth"), tmp_path, progress=False)
    msg = str(e.value)
    assert "absent.pth" in msg and str(tmp_path / "absent.pth") in msg and "bundled" in msg
    with pytest.raises(WeightsUnavailable, match="offline"):
        ensure_weights(weights(server), tmp_path, offline=True, progress=False)
    assert server.requests[-1]["path"] == "/absent.pth"  # offline made no request


def test_placed_file_with_wrong_checksum_is_refused(tmp_path):
    (tmp_path / "mine.pth").write_bytes(b"not the right file")
    with pytest.raises(ChecksumMismatch):
        ensure_weights(Weights("mine.pth", GOOD_SHA), tmp_path, progress=False)


def test_cli_models_download_and_offline_exit_code(server, tmp_path, monkeypatch):
    server.files["/fake.pth"] = PAYLOAD
    register_sam(SamSpec("sam-test-download", sam_config("vit_b"), weights(server)))
    monkeypatch.setenv("SEGSEARCH_CHECKPOINTS", str(tmp_path / "ckpt"))
    runner = CliRunner()
    r = runner.invoke(app, ["models", "download", "sam-test-download"])
    assert r.exit_code == 0, r.output
    assert "verified" in r.output and (tmp_path / "ckpt" / "fake.pth").read_bytes() == PAYLOAD

    r = runner.invoke(app, ["models", "list", "--json"])
    import json

    rows = {row["name"]: row for row in json.loads(r.output)}
    assert rows["sam-test-download"]["present"] is True
    assert rows["sam-vit-h"]["sha256"].startswith("a7bf3b02") and rows["sam-vit-h"]["present"] is False

    monkeypatch.setenv("SEGSEARCH_OFFLINE", "1")
    r = runner.invoke(app, ["models", "download", "sam-vit-b"])
    assert r.exit_code == 2
    assert "sam_vit_b_01ec64.pth" in r.output and str(tmp_path / "ckpt") in r.output


@pytest.mark.parametrize(
    "config",
    [
        sam_config("vit_b"),
        SAM_SHAPES_TINY_CONFIG,
        {**SAM_SHAPES_TINY_CONFIG, "image_size": 512},  # a model fine-tuned at another input size
        sam_config(
            "vit_b",
            image_size=64,
            encoder_embed_dim=32,
            encoder_depth=3,
            encoder_num_heads=2,
            encoder_global_attn_indexes=[0, 2],
            encoder_window_size=2,
            prompt_embed_dim=16,
            decoder_mlp_dim=32,
            iou_head_hidden_dim=8,
        ),
    ],
    ids=["vit-b", "shapes-tiny", "shapes-tiny-512", "odd"],
)
def test_a_sam_checkpoint_file_loads_with_the_architecture_it_was_saved_with(config, tmp_path):
    """`--sam path/to/file.pt`: the architecture is read back from the file (input size, heads,
    global blocks...), so a checkpoint of any SAM-family model loads and segments as saved."""
    import torch

    from segsearch.models.registry import get_sam_spec
    from segsearch.models.sam import build_sam_model, load_sam

    torch.manual_seed(0)
    sam = build_sam_model(config)
    path = tmp_path / "mine.pt"
    torch.save(sam.state_dict(), path)
    spec = get_sam_spec(str(path))
    expected = {**config, "decoder_num_heads": 4 if config["prompt_embed_dim"] == 64 else 8}
    assert {k: spec.config[k] for k in expected} == expected
    loaded = load_sam(spec, tmp_path)  # strict: every tensor has its place and shape
    if config["image_size"] <= 512:  # (ViT-B's 1024-px forward would take seconds)
        x = torch.rand(1, 3, config["image_size"], config["image_size"])
        with torch.inference_mode():
            assert torch.equal(loaded.image_encoder(x), sam.image_encoder(x))
