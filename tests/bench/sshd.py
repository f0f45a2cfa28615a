"""A real OpenSSH server on 127.0.0.1 for the SSH target's tests: throwaway host and client keys,
key-only authentication, a known_hosts line for strict checking. Needs /usr/sbin/sshd (Debian's
openssh-server, installed by `make test`)."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = Path("/usr/sbin/sshd")


@dataclass
class Sshd:
    port: int
    user: str
    client_key: Path
    known_hosts: Path
    folder: Path
    process: subprocess.Popen

    @property
    def address(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


def start_sshd(folder: Path, sftp: bool = True) -> Sshd:
    if not SSHD.is_file():
        raise RuntimeError("/usr/sbin/sshd is missing: install openssh-server (make test does)")
    folder.mkdir(parents=True, exist_ok=True)
    host_key, client_key = keygen(folder / "host_key"), keygen(folder / "client_key")
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    port = _free_port()
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {host_key}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}", "PubkeyAuthentication yes",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
        "PermitRootLogin prohibit-password", f"PidFile {folder / 'sshd.pid'}",
        *(["Subsystem sftp internal-sftp"] if sftp else []),
    ]) + "\n")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege-separation folder sshd insists on
    process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                               stderr=open(folder / "sshd.log", "w"))
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.02)
    else:
        process.kill()
        raise RuntimeError(f"sshd did not start: {(folder / 'sshd.log').read_text()}")
    key_type, key = (folder / "host_key.pub").read_text().split()[:2]
    known_hosts = folder / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {key_type} {key}\n")
    os.chmod(client_key, 0o600)
    return Sshd(port, getpass.getuser(), client_key, known_hosts, folder, process)
