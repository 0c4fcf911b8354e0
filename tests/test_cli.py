"""``python -m imagesvc.cli``, run as a subprocess against a real server on an ephemeral port.

The server runs in this test's event loop (no Triton: its address is a closed port, so
``imagesvc.v1.ImageService`` stays NOT_SERVING while the process-wide ``""`` is SERVING), and
the CLI is started with asyncio's subprocess API so the loop keeps serving while it runs.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from imagesvc import cli
from imagesvc.server import app
from imagesvc.settings import Settings
from tests import images

REPO = Path(__file__).resolve().parents[1]
PIPELINE = {
    "pipelines": [{"operations": [{"resize": {"type": "RESIZING_TYPE_FIT", "width": 32}}]}],
    "output": {"format": "IMAGE_FORMAT_PNG"},
}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
async def target():
    settings = Settings(
        host="127.0.0.1",
        port=0,
        metrics_port=0,
        triton_url=f"127.0.0.1:{closed_port()}",
        workers=1,
        health_poll_s=0.5,
    )
    running = await app.start(settings, CollectorRegistry())
    yield f"127.0.0.1:{running.port}"
    await running.stop(1.0)


@pytest.fixture
def files(tmp_path):
    source = tmp_path / "in.jpg"
    source.write_bytes(images.jpeg(images.coords(64, 48)))
    pipeline = tmp_path / "pipeline.json"
    pipeline.write_text(json.dumps(PIPELINE))
    return source, pipeline


async def run_cli(*args: str, cwd: Path = REPO) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "imagesvc.cli",
        *args,
        cwd=cwd,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


def one_error_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# --- --target / --timeout before or after the command -------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
async def test_target_and_timeout_work_before_and_after_the_command(target, files, tmp_path, where):
    source, pipeline = files
    out = tmp_path / "out.png"
    connection = ["--target", target, "--timeout", "20"]
    command = ["process", str(source), "-o", str(out), "--pipeline", str(pipeline)]
    args = connection + command if where == "before" else command + connection
    code, stdout, stderr = await run_cli(*args)
    assert code == 0, stderr
    assert "wrote" in stdout and "32x24" in stdout
    decoded = images.decode(out.read_bytes())
    assert (decoded.width, decoded.height) == (32, 24)


async def test_an_option_after_the_command_overrides_the_one_before(target):
    dead = f"127.0.0.1:{closed_port()}"
    code, stdout, stderr = await run_cli(
        "--target", dead, "health", "--service", "", "--target", target
    )
    assert (code, stdout.strip()) == (0, "(server): SERVING"), stderr


def test_options_not_given_keep_their_defaults():
    parser = cli.build_parser()
    for argv in (["health"], ["describe", "x.jpg"], ["process", "x.jpg"]):
        args = parser.parse_args(argv)
        assert (args.target, args.timeout) == (cli.DEFAULT_TARGET, cli.DEFAULT_TIMEOUT_S)
    args = parser.parse_args(["--timeout", "3", "health", "--target", "h:1"])
    assert (args.target, args.timeout) == ("h:1", 3.0)


def test_the_readme_synopsis_parses():
    """The README's CLI synopsis lines, with --target after the command."""
    readme = (REPO / "README.md").read_text()
    synopsis = [line for line in readme.splitlines() if line.startswith("python -m imagesvc.cli")]
    assert any("process" in line and "--target" in line for line in synopsis)
    parser = cli.build_parser()
    for line in synopsis:
        words = line.split("#")[0].replace("[", " ").replace("]", " ").split()[3:]
        placeholders = {"HOST:PORT": "h:1", "SECONDS": "5", '""': ""}
        words = [placeholders.get(w, w) for w in words]
        args = parser.parse_args(words)  # SystemExit(2) if argparse rejects it
        assert args.command in ("process", "describe", "health")


# --- health ---------------------------------------------------------------------------------


async def test_health_exit_status_follows_serving(target):
    code, stdout, _ = await run_cli("health", "--target", target, "--service", "")
    assert (code, stdout.strip()) == (0, "(server): SERVING")
    # No Triton, so the readiness service is NOT_SERVING: exit 1.
    code, stdout, _ = await run_cli("health", "--target", target)
    assert (code, stdout.strip()) == (1, "imagesvc.v1.ImageService: NOT_SERVING")


# --- failures: one line, a documented exit status -------------------------------------------


async def test_a_misspelt_operation_is_one_line_and_exit_2(target, files, tmp_path):
    source, _ = files
    pipeline = tmp_path / "typo.json"
    pipeline.write_text(json.dumps({"pipelines": [{"operations": [{"resise": {"width": 9}}]}]}))
    code, stdout, stderr = await run_cli(
        "process", str(source), "--pipeline", str(pipeline), "--target", target
    )
    line = one_error_line(stderr)
    assert code == cli.EXIT_USAGE and not stdout
    assert str(pipeline) in line and '"resise"' in line and "resize" in line


async def test_pipeline_that_is_not_json_is_one_line_and_exit_2(target, files, tmp_path):
    source, _ = files
    pipeline = tmp_path / "broken.json"
    pipeline.write_text('{"pipelines": [')
    code, _, stderr = await run_cli(
        "--target", target, "process", str(source), "--pipeline", str(pipeline)
    )
    assert code == cli.EXIT_USAGE
    assert "not a valid ProcessImageRequest" in one_error_line(stderr)


@pytest.mark.parametrize("missing", ["input", "pipeline", "describe input"])
async def test_a_missing_file_is_one_line_and_exit_2(target, files, tmp_path, missing):
    source, pipeline = files
    nowhere = str(tmp_path / "no-such-file")
    if missing == "input":
        args = ["process", nowhere, "--pipeline", str(pipeline)]
    elif missing == "pipeline":
        args = ["process", str(source), "--pipeline", nowhere]
    else:
        args = ["describe", nowhere]
    code, _, stderr = await run_cli(*args, "--target", target)
    line = one_error_line(stderr)
    assert code == cli.EXIT_USAGE
    assert nowhere in line and "No such file or directory" in line


async def test_an_unwritable_output_is_one_line_and_exit_2(target, files, tmp_path):
    source, pipeline = files
    out = tmp_path / "no-such-dir" / "out.png"
    code, _, stderr = await run_cli(
        "process", str(source), "-o", str(out), "--pipeline", str(pipeline), "--target", target
    )
    assert code == cli.EXIT_USAGE
    assert str(out) in one_error_line(stderr)


@pytest.mark.parametrize("command", ["process", "describe"])
async def test_an_unreachable_server_is_one_line_and_exit_1(files, command):
    source, _ = files
    dead = f"127.0.0.1:{closed_port()}"
    code, stdout, stderr = await run_cli(command, str(source), "--target", dead, "--timeout", "10")
    line = one_error_line(stderr)
    assert code == cli.EXIT_FAILED and not stdout
    assert line.startswith(f"error: cannot reach imagesvc at {dead} (UNAVAILABLE")


async def test_an_unreachable_server_fails_health_with_one_line(files):
    dead = f"127.0.0.1:{closed_port()}"
    code, _, stderr = await run_cli("health", "--target", dead)
    assert code == cli.EXIT_FAILED
    assert one_error_line(stderr).startswith("imagesvc.v1.ImageService: UNAVAILABLE")


async def test_a_rejected_request_prints_its_reason_and_exits_1(target, tmp_path):
    source = tmp_path / "not-an-image.jpg"
    source.write_bytes(b"these bytes are no image at all")
    code, _, stderr = await run_cli("describe", str(source), "--target", target)
    assert code == cli.EXIT_FAILED
    assert "Traceback" not in stderr
    assert stderr.startswith("error: INVALID_ARGUMENT IMAGE_FORMAT_UNRECOGNIZED: ")


async def test_a_bad_option_is_argparse_usage_and_exit_2():
    code, _, stderr = await run_cli("process", "x.jpg", "--format", "bmp")
    assert code == 2 and "invalid choice" in stderr and "Traceback" not in stderr


# --- help -------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], ["process"], ["describe"], ["health"]])
async def test_help_shows_the_defaults(command):
    code, stdout, _ = await run_cli(*command, "--help")
    assert code == 0
    text = " ".join(stdout.split())  # argparse wraps lines
    assert "(default: 127.0.0.1:50051)" in text
    assert "(default: 30.0)" in text
    assert "(default: None)" not in text
    if command == ["health"]:
        assert "(default: imagesvc.v1.ImageService)" in text


def test_an_http_input_is_a_url_source(tmp_path):
    from imagesvc import cli

    assert cli._source("https://img.example.com/a.jpg").url == "https://img.example.com/a.jpg"
    path = tmp_path / "a.jpg"
    path.write_bytes(b"\xff\xd8")
    assert cli._source(str(path)).data == b"\xff\xd8"


# --- sources, presets, if-none-match ----------------------------------------------------------


def parse(*argv: str):
    return cli.build_parser().parse_args(list(argv))


@pytest.mark.parametrize(
    "argv",
    [
        ["process", "s3://photos/2024/cat.jpg?versionId=v7"],
        ["process", "--object", "s3://photos/2024/cat.jpg?versionId=v7"],
    ],
)
def test_an_s3_url_is_an_object_source(argv):
    request = cli.process_request(parse(*argv))
    assert request.source.WhichOneof("kind") == "object"
    location = request.source.object
    assert (location.bucket, location.key, location.version_id) == ("photos", "2024/cat.jpg", "v7")
    plain = cli._source("s3://photos/a b?c.jpg").object
    assert (plain.bucket, plain.key, plain.version_id) == ("photos", "a b?c.jpg", "")


def test_url_option_is_a_url_source():
    request = cli.process_request(parse("process", "--url", "https://img.example.com/a.jpg"))
    assert request.source.url == "https://img.example.com/a.jpg"


def test_presets_and_if_none_match_fill_the_request(files):
    source, pipeline = files
    args = parse(
        "process", str(source), "--preset", "thumb", "--preset", "webp", "--if-none-match", '"e1"'
    )
    request = cli.process_request(args)
    assert list(request.presets) == ["thumb", "webp"]
    assert request.if_none_match == '"e1"'
    assert request.source.data == source.read_bytes()


@pytest.mark.parametrize(
    "argv, words",
    [
        (["process"], "exactly one source"),
        (["process", "a.jpg", "--url", "https://x.example/a.jpg"], "exactly one source"),
        (["describe", "--url", "ftp://x.example/a.jpg"], "not an http(s) URL"),
        (["process", "--object", "s3://bucket-only"], "s3://bucket-only"),
        (["process", "s3:///key.jpg"], "s3:///key.jpg"),
        (["process", "s3://b/k.jpg?versionId="], "versionId is empty"),
        (["describe", "x.jpg", "--tls-cert", "c.pem"], "--tls-key"),
        (["process", "x.jpg", "--token", "a", "--token-file", "t"], "not both"),
    ],
)
async def test_bad_sources_and_options_are_one_line_and_exit_2(argv, words):
    code, stdout, stderr = await run_cli(*argv)
    assert code == cli.EXIT_USAGE and not stdout
    assert words in one_error_line(stderr)


async def test_if_none_match_prints_not_modified(target, files, tmp_path):
    source, pipeline = files
    out = tmp_path / "out.png"
    args = ["process", str(source), "-o", str(out), "--pipeline", str(pipeline), "--target", target]
    code, stdout, stderr = await run_cli(*args)
    assert code == 0, stderr
    etags = [line.split()[1] for line in stdout.splitlines() if line.strip().startswith("etag ")]
    assert len(etags) == 1 and etags[0].startswith('"')
    out.unlink()
    code, stdout, stderr = await run_cli(*args, "--if-none-match", etags[0])
    assert code == 0, stderr
    assert stdout.strip() == f"not modified: etag {etags[0]} (nothing written)"
    assert not out.exists()


# --- token and TLS options --------------------------------------------------------------------


def test_the_token_comes_from_the_option_the_file_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(cli.TOKEN_ENV, raising=False)
    assert cli._call_metadata(parse("health")) == ()
    monkeypatch.setenv(cli.TOKEN_ENV, "from-env")
    assert cli._call_metadata(parse("health")) == (("authorization", "Bearer from-env"),)
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    args = parse("--token-file", str(token_file), "describe", "x.jpg")
    assert cli._call_metadata(args) == (("authorization", "Bearer from-file"),)
    args = parse("describe", "x.jpg", "--token", "from-option")
    assert cli._call_metadata(args) == (("authorization", "Bearer from-option"),)


def test_any_tls_option_implies_tls():
    assert not cli._uses_tls(parse("health"))
    for option in (["--tls"], ["--tls-ca", "ca.pem"], ["--tls-server-name", "svc.example"]):
        assert cli._uses_tls(parse("health", *option))
        assert cli._uses_tls(parse(*option, "health"))


async def test_a_token_is_sent_only_to_the_image_service(target, files):
    """A plaintext server without tokens ignores the metadata; health gets none."""
    source, _ = files
    code, stdout, stderr = await run_cli(
        "describe", str(source), "--target", target, "--token", "t"
    )
    assert code == 0, stderr
    assert '"width": 64' in stdout
