"""Making the changes of a setup, in the manual's order; shared by `-i` and `-r`.

1. root steps on the source (script, wait until run); 2. the service key pair;
3. its line in the destination user's authorized_keys; 4. root steps on the
destination (with the definition's copy for failback); 5. the final check through
the agent. Every step first looks whether it is done already, so running setup
again with the same definition changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from zfsrepl import __version__, config, zfswrap
from zfsrepl.config import Service
from zfsrepl.cycle import dry_run
from zfsrepl.errors import ZfsreplError
from zfsrepl.host import LocalHost, SshHost
from zfsrepl.setup import authorized_keys, keys, rootscript
from zfsrepl.setup.files import write_if_changed
from zfsrepl.setup.remote import Destination
from zfsrepl.setup.rootscript import RootStep
from zfsrepl.setup.wizard import Console, key_path

POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Places:
    config_dir: Path
    log_dir: Path
    state_dir: Path | None = None
    # The destination host's configuration folder, where the definition's copy goes as
    # services/NAME.toml (role = "destination"): runonce and failover there find it by
    # name. None: the same path as config_dir (separate hosts, each its own /etc).
    destination_config_dir: Path | None = None
    options: str = ""  # folder options to show in commands: " --config-dir X"


def normalized(svc: Service, config_dir: Path) -> Service:
    """The definition as installed on the source: its role, and setup's key."""
    identity = key_path(config_dir, svc.source.user, svc.name)
    return replace(svc, role="source", path=None,
                   destination=replace(svc.destination, identity=identity))


def remote_copy(svc: Service) -> Service:
    return replace(svc, role="destination", path=None)


def agent_log(places: Places, svc: Service) -> str:
    return str(places.log_dir / f"agent.{svc.name}.log")


def forced_argv(svc: Service, zfsrepl: str, log_file: str) -> list[str]:
    """The agent's command line: everything it allows comes from here."""
    argv = [zfsrepl, "agent", "--service", svc.name,
            "--source-user", svc.source.user,
            "--destination-user", svc.destination.user,
            "--destination-host", svc.destination.host,
            "--zfs-command", svc.destination.zfs_command,
            "--log", log_file]
    for pair in svc.filesystems:
        argv += ["--filesystem", pair.destination]
    if svc.recursive:
        argv.append("--recursive")
    return argv


def root_step(svc: Service, side: str, places: Places) -> RootStep:
    ep = svc.source if side == "source" else svc.destination
    rights, zfs_path = rootscript.rights_of(ep.zfs_command)
    perms: tuple[str, ...]
    if side == "source":
        text = config.dump_service(svc)
        datasets = tuple(p.source for p in svc.filesystems)
        perms, file, log = rootscript.SOURCE_PERMISSIONS, f"{svc.name}.toml", None
    else:
        text = config.dump_service(remote_copy(svc))
        # The destination filesystems appear with the first receive: grant on parents.
        datasets = tuple(sorted({p.destination.rsplit("/", 1)[0] for p in svc.filesystems}))
        perms, file = rootscript.DESTINATION_PERMISSIONS, f"{svc.name}.toml"
        log = agent_log(places, svc)
    state = service_log = None
    if side == "source":
        # what runonce and the service write as the source user
        if places.state_dir is not None:
            state = str(places.state_dir / "services" / svc.name)
        service_log = str(places.log_dir / f"{svc.name}.log")
    cfg = places.config_dir if side == "source" else \
        places.destination_config_dir or places.config_dir
    sudo_rule = digest = None
    if rights == "sudo":
        # the wrapper's rule: the service's own filesystems on this side, exactly
        own = frozenset(p.source if side == "source" else p.destination
                        for p in svc.filesystems)
        sudo_rule = zfswrap.Rule(service=svc.name, side=side, filesystems=own,
                                 naming=svc.naming, recursive=svc.recursive).to_json()
        digest = rootscript.wrapper_digest(rootscript.wrapper_modules())
    return RootStep(side=side, host=ep.host, user=ep.user, service=svc.name,
                    config_dir=str(cfg), definition_file=file,
                    definition_text=text, rights=rights, zfs_path=zfs_path,
                    datasets=datasets, permissions=perms, agent_log=log,
                    state_folder=state, service_log=service_log,
                    sudo_rule=sudo_rule, wrapper_digest=digest)


def wait_for_root(console: Console, where: str, script: str,
                  check: Callable[[], list[str]], poll: float, text: str) -> None:
    problems = check()
    if not problems:
        console.say(f"The root steps on {where} are done already ({script}).")
        return
    name = os.path.basename(script)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    console.say(f"Please run the script {script} as root on {where} now, from another "
                "terminal.....")
    # The user who owns the home there could change the script before root runs it: root
    # runs a copy of its own whose digest matches the one computed here.
    console.say(f"It runs only from a folder that only root can write: as root, "
                f"install -m 0700 {script} /root/{name} && sha256sum /root/{name} "
                f"(it must print {digest}), then sh /root/{name}")
    console.say("Still to do there: " + "; ".join(problems))
    last = problems
    while problems:
        time.sleep(poll)
        problems = check()
        if problems and problems != last:
            console.say("Still to do there: " + "; ".join(problems))
            last = problems
    console.say(f"The root steps on {where} are done.")


def apply(svc: Service, places: Places, console: Console, dest: Destination,
          poll: float = POLL_SECONDS) -> int:
    """Make every change of the setup; returns the exit code of the final check."""
    svc = normalized(svc, places.config_dir)
    src_where = f"the source system {svc.source.host}"
    dst_where = f"the destination system {svc.destination.host}"

    # 1. source root steps
    step = root_step(svc, "source", places)
    script = Path.home() / step.script_name
    text = rootscript.render(step)
    write_if_changed(script, text, 0o700)
    wait_for_root(console, src_where, str(script), lambda: rootscript.problems(step), poll,
                  text)

    # 2. the key pair
    private = Path(key_path(places.config_dir, svc.source.user, svc.name))
    marker = authorized_keys.service_marker(svc.name, svc.source.user, svc.source.host)
    public, created = keys.ensure_key(private, marker)
    console.say(f"{'Generated' if created else 'Using'} the key pair {private} (.pub).")

    # 3. the key on the destination, pinned to the agent
    line = authorized_keys.key_line(public, forced_argv(svc, dest.zfsrepl,
                                                        agent_log(places, svc)), marker)
    console.say(f"Installing the public key for {dest.label} (restricted to the agent)...")
    changed = dest.install_key(line, marker)
    console.say("The key line was " + ("written." if changed else "in place already."))

    # 4. destination root steps, with the definition's copy
    dstep = root_step(svc, "destination", places)
    dtext = rootscript.render(dstep)
    dscript, _ = dest.write_file(dstep.script_name, dtext, 0o700)
    wait_for_root(console, dst_where, dscript, lambda: dest.root_problems(dstep), poll, dtext)
    dest.close()

    # 5. the check, with the new key through the agent
    console.say("Checking the installation now...")
    problems = final_check(svc)
    if problems:
        console.say("The installation is not correct. To fix:")
        for p in problems:
            console.say(f"  - {p}")
        return 1
    opt = places.options
    console.say("The installation is correct.")
    console.say(f"The service {svc.name} can be started now (as root): zfsrepl{opt} enable "
                f"{svc.name}")
    console.say(f"One cycle now, as {svc.source.user}: zfsrepl{opt} runonce {svc.name}")
    return 0


def final_check(svc: Service) -> list[str]:
    """What is wrong with the installed service, each with what to do; empty if correct."""
    assert svc.destination.identity is not None
    problems = keys.permission_problems(Path(svc.destination.identity))
    rerun = "run setup -r again with the response file"
    with SshHost(svc.destination) as dst:
        try:
            hello = json.loads(dst.run(["hello"]).stdout)
        except ZfsreplError as exc:
            return [*problems, f"the service key does not reach the agent on "
                               f"{dst.label}: {exc}; {rerun}"]
        except ValueError:
            return [*problems, f"the service key on {dst.label} does not run the zfsrepl "
                               f"agent; {rerun}"]
        wanted = sorted(p.destination for p in svc.filesystems)
        if hello.get("service") != svc.name or hello.get("filesystems") != wanted:
            problems.append(f"the key's line on {dst.label} is for another definition "
                            f"({hello.get('service')}: {hello.get('filesystems')}); {rerun}")
        if hello.get("version") != __version__:
            problems.append(f"zfsrepl on {dst.label} is version {hello.get('version')}, here "
                            f"{__version__}: install the same version on both")
        try:
            plan = dry_run(svc, LocalHost(f"{svc.source.user}@{svc.source.host}"), dst)
        except ZfsreplError as exc:
            problems.append(str(exc))
        else:
            problems += plan.conflicts()
    return problems

