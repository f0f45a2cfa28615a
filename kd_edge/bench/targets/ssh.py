"""SSH transport (paramiko): strict host-key checking, timeouts, every argument quoted."""

from __future__ import annotations

import socket
from pathlib import Path

from typing import Literal

from pydantic import Field

from kd_edge.bench.targets.remote import RemoteTargetConfig, quote
from kd_edge.errors import ConfigError, DependencyError, TargetError


def parse_address(text: str) -> tuple[str | None, str, int]:
    """``user@host[:port]`` or ``ssh://user@host:port`` -> (user, host, port)."""
    text = text.removeprefix("ssh://")
    user, _, hostport = text.rpartition("@")
    host, _, port = hostport.partition(":")
    if not host:
        raise TargetError(f"'{text}' is not an SSH address; write user@host or user@host:port")
    try:
        return (user or None), host, int(port) if port else 22
    except ValueError:
        raise TargetError(f"'{text}': port '{port}' is not a number; write user@host:PORT, e.g. pi@10.0.0.7:2222") from None


class SshTargetConfig(RemoteTargetConfig):
    """A machine over SSH (a Raspberry Pi, a board, a server)."""

    label = "SSH"
    kind: Literal["ssh"] = "ssh"
    host: str | None = Field(None, description="user@host[:port].")
    key_file: str | None = Field(None, description="Private key (default: the SSH agent and ~/.ssh keys).")
    known_hosts: str | None = Field(None, description="A known_hosts file besides ~/.ssh/known_hosts.")
    connect_timeout_s: float = Field(10.0, gt=0, description="Give up connecting after this long.")

    def check(self) -> None:
        if not self.host:
            raise ConfigError(f"target {self.name} is reached over SSH; give the address in bench.host (user@host)",
                              keys=("bench.host",))
        parse_address(self.host)
        for what, value, key in (("key", self.key_file, "bench.key_file"),
                                 ("known_hosts file", self.known_hosts, "bench.known_hosts")):
            if value and not Path(value).expanduser().is_file():
                raise ConfigError(f"the SSH {what} '{value}' does not exist; name an existing file in {key}",
                                  keys=(key,))

    def transport(self) -> "SshTransport":
        self.check()
        return SshTransport(self.host, key_file=self.key_file, known_hosts=self.known_hosts,
                            connect_timeout=self.connect_timeout_s)


class SshTransport:
    """Commands and files over one SSH connection."""

    def __init__(self, address: str, *, key_file: str | None = None, known_hosts: str | None = None,
                 connect_timeout: float = 10.0):
        try:
            import paramiko
        except ImportError as e:
            raise DependencyError("the ssh target needs paramiko; run: pip install 'kd-edge[ssh]'") from e
        self.user, self.host, self.port = parse_address(address)
        self.name = f"{self.user + '@' if self.user else ''}{self.host}" + (f":{self.port}" if self.port != 22 else "")
        client = paramiko.SSHClient()
        client.load_system_host_keys()
        if known_hosts:
            try:
                client.load_host_keys(str(Path(known_hosts).expanduser()))
            except (OSError, paramiko.SSHException, ValueError) as e:
                raise TargetError(f"cannot read the known_hosts file '{known_hosts}' ({e}); pass a file of lines "
                                  "'[host]:port TYPE KEY', e.g. from ssh-keyscan") from None
        # An unknown host is refused, never added: a benchmark must not train users to accept keys blindly.
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        host_id = f"[{self.host}]:{self.port}" if self.port != 22 else self.host
        try:
            client.connect(self.host, port=self.port, username=self.user, key_filename=key_file,
                           timeout=connect_timeout, banner_timeout=connect_timeout, auth_timeout=connect_timeout,
                           allow_agent=key_file is None, look_for_keys=key_file is None)
        except paramiko.PasswordRequiredException:
            raise TargetError(f"the key {key_file} is protected by a passphrase; load it into the SSH agent "
                              f"(ssh-add {key_file}) and leave bench.key_file unset", keys=("bench.key_file",)) from None
        except paramiko.BadHostKeyException:
            raise TargetError(
                f"the host key of {host_id} is not the one in known_hosts: refusing to connect (this can be an attack); "
                f"check the key on the device (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then remove the old "
                f"entry with: ssh-keygen -R '{host_id}'") from None
        except paramiko.AuthenticationException:
            raise TargetError(f"{self.name} refused the key{' ' + key_file if key_file else 's'}; install the public key "
                              f"on the device (ssh-copy-id -p {self.port} {self.name.split(':')[0]}) or name the right "
                              "one in bench.key_file (key_file: in a profile)", keys=("bench.key_file",)) from None
        except paramiko.SSHException as e:
            if "No authentication methods available" in str(e):
                raise TargetError(f"no SSH key to log in to {self.name} with: the SSH agent and ~/.ssh hold none; name "
                                  "one in bench.key_file (key_file: in a profile)", keys=("bench.key_file",)) from None
            if "not found in known_hosts" in str(e):
                raise TargetError(f"{host_id} is not in known_hosts; check its fingerprint, then add it: "
                                  f"ssh-keyscan -p {self.port} {self.host} >> ~/.ssh/known_hosts, or name a file that "
                                  "holds it in bench.known_hosts", keys=("bench.known_hosts",)) from None
            if "banner" in str(e):
                raise TargetError(f"{self.name} did not answer within {connect_timeout:g} s (no SSH greeting); check the "
                                  "address, that the device is on and sshd runs, and the network") from None
            if key_file and ("private key" in str(e) or "key" in str(e).lower() and "invalid" in str(e).lower()):
                raise TargetError(f"'{key_file}' is not a private key paramiko can read ({e}); name an OpenSSH "
                                  "private key in bench.key_file", keys=("bench.key_file",)) from None
            raise TargetError(f"SSH to {self.name} failed ({e}); check the address, the key (bench.key_file) and that "
                              "the device's sshd runs", keys=("bench.key_file",)) from None
        except (socket.timeout, TimeoutError):
            raise TargetError(f"{self.name} did not answer within {connect_timeout:g} s; check the address, that the "
                              "device is on and sshd runs, and the network") from None
        except OSError as e:
            raise TargetError(f"cannot reach {self.name} ({e.strerror or e}); check the address and that sshd runs") from None
        self.client = client
        self._sftp = None

    def run(self, argv: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        stdin, stdout, stderr = self.client.exec_command(quote(argv), timeout=timeout)
        stdin.close()
        try:
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
        except socket.timeout:
            raise TimeoutError(quote(argv)) from None
        return stdout.channel.recv_exit_status(), out, err

    def put(self, local: Path, remote: str) -> None:
        import paramiko

        if self._sftp is None:
            try:
                self._sftp = self.client.open_sftp()
            except (paramiko.SSHException, EOFError) as e:
                raise TargetError(f"{self.name} offers no SFTP, which kd-edge copies files with ({e or type(e).__name__}); "
                                  "enable it in the device's sshd_config (Subsystem sftp internal-sftp) and restart "
                                  "sshd") from None
        self._sftp.put(str(local), remote)

    def close(self) -> None:
        if self._sftp is not None:
            self._sftp.close()
        self.client.close()
