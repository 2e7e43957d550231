"""The client's command line: usage, exit statuses and one-line failures
(its packet-to-line formatting: tests/unit/test_client_formatting.py)."""

import os
import re
import socket
import subprocess
import sys

import pexpect
import pytest

from tests.support import ROOT


def run_client(*args):
    return subprocess.run([sys.executable, "chat_client.py", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


def run_in_terminal(*args, env=None):
    """The client in a pty (so it gets past its terminal check): its exit
    status and everything it printed."""
    child = pexpect.spawn(sys.executable, ["chat_client.py", *args], cwd=str(ROOT),
                          env=dict(os.environ, TERM="xterm", **(env or {})),
                          dimensions=(24, 80), timeout=30)
    output = child.read().decode("utf-8", "replace")
    child.close()
    return child.exitstatus, output


@pytest.mark.parametrize("args", [[], ["pat"], ["pat", "localhost"], ["pat", "localhost", "x"],
                                  ["pat", "localhost", "70000"], ["two words", "localhost", "1"],
                                  ["pat", "localhost", "1", "--ui", "gtk"]])
def test_bad_command_line_prints_usage_and_exits_2(args):
    result = run_client(*args)
    assert result.returncode == 2
    assert result.stderr.startswith("usage:") and "Traceback" not in result.stderr


def test_connection_refused_is_one_line_and_exit_1():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once closed
    status, output = run_in_terminal("pat", "127.0.0.1", str(port))
    assert status == 1
    assert output.strip().count("\n") == 0
    assert "cannot connect" in output and "refused" in output


def test_unknown_host_is_one_line_and_exit_1():
    status, output = run_in_terminal("pat", "no-such-host.invalid", "3490")
    assert status == 1
    assert output.startswith("chat_client.py: cannot connect to no-such-host.invalid")
    assert "Traceback" not in output


def test_version_on_both_programs():
    for program in ("chat_client.py", "chat_server.py"):
        result = subprocess.run([sys.executable, program, "--version"], cwd=ROOT,
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0
        assert re.fullmatch(rf"{program} \S+\n", result.stdout), result.stdout


def test_help_lists_the_keys():
    result = run_client("--help")
    assert result.returncode == 0
    assert "keys:" in result.stdout and "PageUp/PageDown" in result.stdout


@pytest.mark.parametrize("program, script", [("chat-client", "chat_client"),
                                             ("chat-server", "chat_server")])
def test_usage_lines_name_the_program_as_invoked(tmp_path, program, script):
    launcher = tmp_path / program
    launcher.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                        f"import {script}\nsys.exit({script}.main())\n")
    launcher.chmod(0o755)
    result = subprocess.run([str(launcher)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith(f"usage: {program} ")


def self_signed_pem(path):
    """A self-signed certificate (and its key) for localhost, as a test
    server of one's own would have."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption())
                     + cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.parametrize("ui", ["curses", "ansi"])
def test_a_self_signed_certificate_suggests_tls_ca(tmp_path, ui):
    """Issue 20, finding 9: the refusal gave no hint of what to do."""
    from tests.support import ServerProcess
    pem = str(self_signed_pem(tmp_path / "self.pem"))
    server = ServerProcess("--tls-cert", pem, "--tls-key", pem)
    try:
        status, output = run_in_terminal("pat", "localhost", str(server.port), "--tls",
                                         "--ui", ui)
        assert status == 1 and output.count("\n") <= 1, output
        assert "the server's certificate is not trusted: self-signed certificate" in output
        assert "trust that with --tls-ca FILE" in output
        assert "hello pat" not in server.log_text()
    finally:
        server.cleanup()
