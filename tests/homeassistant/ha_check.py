#!/usr/bin/env python3
"""Check pbx2mqtt's Home Assistant MQTT discovery against a real Home Assistant Core.

The check starts Home Assistant (from a virtualenv, see install_ha.sh) on a free
port with a fresh temporary config dir, onboards it through its API, configures
the MQTT integration against the given broker through the config-flow API, waits
for the birth message, then waits until every expected entity and device exists
and matches what the bridge publishes on MQTT:

  per agent   sensor        <node>_<agent>_status        device_class enum (options when HA >= 2024.9)
              binary_sensor <node>_<agent>_on_a_call
              sensor        <node>_<agent>_status_since  device_class timestamp
              switch        <node>_<agent>_queue_<q>     one per --queues entry
  bridge      binary_sensor <node>_bridge_connection     device_class connectivity
  devices     <node>_agent_<agent> (via <node>_bridge), <node>_bridge

where <node> is the base topic with every character outside [A-Za-z0-9_-]
replaced by '_' (SCHEMA.md). States are compared with the retained state topics
(<base>/agent/<id>, <base>/agent/<id>/queues, <base>/bridge/state).

Optionally it toggles a queue switch through HA's REST API (switch.turn_on /
turn_off) and waits for the switch to follow the membership topic, and takes a
screenshot of an agent's device page with Debian's chromium via playwright.

With --fake-bridge FILE (example_discovery.json) it publishes that hand-written
set itself, renamed to a unique base topic and discovery prefix, and answers the
switch commands the way pbx2mqtt will, which proves the harness and the schema
without pbx2mqtt. Everything it published is cleared again at the end.

Exit status: 0 all checks passed, 1 a check failed (the JSON summary and the
messages say which), 2 bad usage, 77 Home Assistant is not installed ("SKIP: ...").

Examples:
  PBX2MQTT_TEST_HA_PYTHON=/work/ha-venv/bin/python \\
    tests/homeassistant/ha_check.py --fake-bridge tests/homeassistant/example_discovery.json \\
    --toggle --check-removal agent1002 --screenshot /tmp/ha-device.png
  tests/homeassistant/ha_check.py --ha-python /work/ha-venv/bin/python \\
    --broker mqtt://127.0.0.1:1883 --base-topic pbx2mqtt_it42 --discovery-prefix ha_it42 \\
    --agents agent1001,agent1002 --queues 500 --toggle agent1001:500
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import queue
import random
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

STATUSES = [
    "offline",
    "paused",
    "busy",
    "unavailable",
    "available",
    "ringing",
    "on_call",
    "wrapup",
    "unknown",
]
SKIP_EXIT = 77
REEXEC_ENV = "_PBX2MQTT_HA_CHECK_REEXEC"

# HA log lines that are expected with this setup and mean nothing for discovery.
BENIGN_LOG = [
    "Skipping pip installation of required modules",
    "Support for the running Python version",
    "We found a custom integration",
]
# Loggers whose warnings/errors mean the discovery payloads or states are wrong.
WATCHED_LOGGERS = re.compile(
    r"\[(homeassistant\.components\.(mqtt|sensor|binary_sensor|switch)[^\]]*"
    r"|homeassistant\.helpers\.(template|entity|entity_platform|device_registry))\]"
)


def log(msg: str) -> None:
    print(f"[ha_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def skip(why: str) -> None:
    print(f"SKIP: {why}", flush=True)
    sys.exit(SKIP_EXIT)


def node_id(base_topic: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", base_topic)


def wait_for(what: str, timeout: float, probe: Callable[[], Any], interval: float = 0.25) -> Any:
    """Poll probe() until it returns something truthy; raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    last_err: Exception | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except Exception as err:  # noqa: BLE001 - reported on timeout
            last_err = err
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_err})" if last_err else ""
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{extra}")
        time.sleep(interval)


# --------------------------------------------------------------------------- args


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Verify pbx2mqtt's MQTT discovery against a real Home Assistant Core.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--ha-python", default=os.environ.get("PBX2MQTT_TEST_HA_PYTHON"),
                   help="python of a virtualenv with homeassistant installed, or the venv dir "
                        "(default: $PBX2MQTT_TEST_HA_PYTHON)")
    p.add_argument("--broker", default=os.environ.get("PBX2MQTT_TEST_MQTT_URL", "mqtt://127.0.0.1:1883"),
                   help="broker URL mqtt://host:port (default: $PBX2MQTT_TEST_MQTT_URL or mqtt://127.0.0.1:1883)")
    p.add_argument("--broker-host", help="overrides the host of --broker")
    p.add_argument("--broker-port", type=int, help="overrides the port of --broker")
    p.add_argument("--agents", default="", help="comma-separated agent ids, e.g. agent1001,agent1002")
    p.add_argument("--queues", default="", help="comma-separated queue numbers (commands.allowed_queues)")
    p.add_argument("--base-topic", default="pbx2mqtt")
    p.add_argument("--discovery-prefix", default="homeassistant")
    p.add_argument("--birth-topic", default=None,
                   help="HA's birth/will topic (default: <discovery-prefix>/status; HA's own default "
                        "is homeassistant/status whatever the prefix)")
    p.add_argument("--status-map", default="", metavar="FROM=TO,...",
                   help="if the status sensor's value_template renames statuses for HA (e.g. "
                        "unavailable=not_available,unknown=stale: HA shows the strings 'unavailable' and "
                        "'unknown' as a missing entity/value), the renaming to expect")
    p.add_argument("--absent-agents", default="",
                   help="comma-separated agent ids that must have no entity and no device")
    p.add_argument("--toggle", nargs="?", const="", default=None, metavar="AGENT:QUEUE",
                   help="flip a queue switch via HA and back, waiting for the state to follow "
                        "(default: first agent, first queue)")
    p.add_argument("--screenshot", metavar="PNG", help="screenshot an agent's device page (needs chromium + playwright)")
    p.add_argument("--chromium", default="/usr/bin/chromium", help="chromium executable for --screenshot")
    p.add_argument("--fake-bridge", metavar="JSON",
                   help="publish this discovery set (example_discovery.json) under a unique base topic "
                        "and prefix, answer switch commands, clean up at the end")
    p.add_argument("--check-birth-republish", action="store_true",
                   help="require the bridge to republish its discovery configs after HA's birth message")
    p.add_argument("--check-removal", metavar="AGENT",
                   help="with --fake-bridge: publish empty retained configs for AGENT and check that its "
                        "entities and device disappear")
    p.add_argument("--mqtt-setup", choices=["seed", "flow"], default="seed",
                   help="seed: write the MQTT config entry into .storage before HA starts, so HA's first "
                        "connection already uses the prefix and birth topic (default); flow: create it "
                        "through the config-flow REST API after onboarding, then set the prefix and birth "
                        "topic through the options flow (HA first connects with the defaults)")
    p.add_argument("--start-timeout", type=float, default=120, help="seconds for HA to start and connect")
    p.add_argument("--timeout", type=float, default=60, help="seconds for entities/states to appear or change")
    p.add_argument("--allow-log-problems", action="store_true",
                   help="do not fail on warnings/errors from HA's mqtt/sensor/template loggers")
    p.add_argument("--keep", action="store_true", help="keep the temporary HA config dir (path is printed)")
    p.add_argument("--json-out", metavar="FILE", help="also write the JSON summary to FILE")
    args = p.parse_args(argv)

    url = urllib.parse.urlparse(args.broker)
    if url.scheme not in ("mqtt", "tcp", ""):
        p.error(f"--broker: only plain mqtt://host:port is supported, got {args.broker!r}")
    args.host = args.broker_host or url.hostname or "127.0.0.1"
    args.port = args.broker_port or url.port or 1883
    args.agent_list = [a for a in args.agents.split(",") if a]
    args.queue_list = [q for q in args.queues.split(",") if q]
    args.absent_list = [a for a in args.absent_agents.split(",") if a]
    try:
        args.status_map = dict(pair.split("=", 1) for pair in args.status_map.split(",") if pair)
    except ValueError:
        p.error("--status-map: expected FROM=TO[,FROM=TO...]")
    if args.check_removal and not args.fake_bridge:
        p.error("--check-removal needs --fake-bridge")
    if not args.fake_bridge and not args.agent_list:
        p.error("--agents is required (or --fake-bridge)")
    return args


def resolve_ha_python(value: str | None) -> tuple[str, str]:
    if not value:
        skip("Home Assistant is not installed for this check: set PBX2MQTT_TEST_HA_PYTHON or "
             "pass --ha-python (tests/homeassistant/install_ha.sh makes one)")
    path = Path(value)
    if path.is_dir():
        path = path / "bin" / "python"
    if not path.exists():
        skip(f"Home Assistant python {path} does not exist (tests/homeassistant/install_ha.sh makes one)")
    probe = subprocess.run(
        [str(path), "-c", "import sys, homeassistant.const as c, paho.mqtt.client, aiohttp; print(sys.prefix)"],
        capture_output=True, text=True, timeout=120,
    )
    if probe.returncode != 0:
        skip(f"{path} cannot import homeassistant/paho-mqtt/aiohttp "
             f"({probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else 'no output'})")
    return str(path), probe.stdout.strip()


# --------------------------------------------------------------------------- MQTT


class Mqtt:
    """A paho client that records the last message per topic and every message per filter."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        import paho.mqtt.client as mqtt

        self._mqtt = mqtt
        try:  # paho 2.x
            self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION1, client_id=client_id)
        except AttributeError:  # paho 1.x (what HA 2024.3 ships)
            self.client = mqtt.Client(client_id=client_id)
        self.lock = threading.Lock()
        self.last: dict[str, tuple[bytes, bool]] = {}
        self.log: list[tuple[float, str, bytes, bool]] = []
        self.handlers: list[tuple[str, Callable[[str, bytes, bool], None]]] = []
        self.connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc: rc == 0 and self.connected.set()
        self.client.on_message = self._on_message
        # Handlers publish (and wait for the PUBACK); that cannot happen on paho's
        # network thread, which delivers the messages, so they run on their own thread.
        self._work: queue.Queue[tuple[Callable[[str, bytes, bool], None], str, bytes, bool] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._run_handlers, daemon=True)
        self._worker.start()
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError(f"cannot connect to the MQTT broker at {host}:{port}")

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self.lock:
            self.last[msg.topic] = (msg.payload, bool(msg.retain))
            self.log.append((time.time(), msg.topic, msg.payload, bool(msg.retain)))
            handlers = list(self.handlers)
        for flt, fn in handlers:
            if self._mqtt.topic_matches_sub(flt, msg.topic):
                self._work.put((fn, msg.topic, msg.payload, bool(msg.retain)))

    def _run_handlers(self) -> None:
        while (item := self._work.get()) is not None:
            fn, topic, payload, retain = item
            try:
                fn(topic, payload, retain)
            except Exception as err:  # noqa: BLE001
                log(f"handler for {topic} failed: {err}")

    def subscribe(self, topic: str, handler: Callable[[str, bytes, bool], None] | None = None) -> None:
        if handler:
            with self.lock:
                self.handlers.append((topic, handler))
        result, mid = self.client.subscribe(topic, qos=1)
        if result != 0:
            raise RuntimeError(f"subscribe {topic} failed: {result}")

    def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)

    def get(self, topic: str) -> bytes | None:
        with self.lock:
            entry = self.last.get(topic)
        return entry[0] if entry else None

    def get_json(self, topic: str) -> Any:
        raw = self.get(topic)
        if not raw:
            return None
        return json.loads(raw)

    def messages(self, flt: str, since: float = 0) -> list[tuple[float, str, bytes, bool]]:
        with self.lock:
            return [m for m in self.log if m[0] >= since and self._mqtt.topic_matches_sub(flt, m[1])]

    def close(self) -> None:
        self._work.put(None)
        self._worker.join(10)
        self.client.loop_stop()
        self.client.disconnect()


# --------------------------------------------------------------------------- HA


class HomeAssistant:
    def __init__(self, python: str, config_dir: Path, port: int) -> None:
        self.python = python
        self.config_dir = config_dir
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.client_id = f"{self.base}/"
        self.token = ""
        self.refresh_token = ""
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file = config_dir / "home-assistant.log"
        self.version = ""

    # -- process
    def seed_mqtt_entry(self, host: str, port: int, prefix: str, birth_topic: str) -> str:
        """Write the MQTT config entry as HA's config flow would store it (core.config_entries v1.1;
        newer HA migrates this version forward)."""
        entry_id = "%032x" % random.randrange(16**32)
        message = {"topic": birth_topic, "qos": 0, "retain": False}
        entry = {
            "entry_id": entry_id, "version": 1, "minor_version": 1, "domain": "mqtt", "title": host,
            "data": {"broker": host, "port": port, "discovery": True, "discovery_prefix": prefix,
                     "birth_message": {**message, "payload": "online"},
                     "will_message": {**message, "payload": "offline"}},
            "options": {}, "pref_disable_new_entities": False, "pref_disable_polling": False,
            "source": "user", "unique_id": None, "disabled_by": None,
        }
        (self.config_dir / ".storage").mkdir(parents=True, exist_ok=True)
        (self.config_dir / ".storage" / "core.config_entries").write_text(json.dumps({
            "version": 1, "minor_version": 1, "key": "core.config_entries", "data": {"entries": [entry]},
        }))
        return entry_id

    def write_config(self) -> None:
        (self.config_dir / ".storage").mkdir(parents=True, exist_ok=True)
        (self.config_dir / "configuration.yaml").write_text(
            "# Written by tests/homeassistant/ha_check.py: the smallest config that loads the\n"
            "# integrations the check needs. HA always adds its default integrations too.\n"
            "homeassistant:\n"
            "  name: pbx2mqtt check\n"
            "  latitude: 52.37\n"
            "  longitude: 4.89\n"
            "  elevation: 0\n"
            "  unit_system: metric\n"
            "  time_zone: UTC\n"
            "  currency: EUR\n"
            "  country: NL\n"
            "http:\n"
            "  server_host: 127.0.0.1\n"
            f"  server_port: {self.port}\n"
            "api:\n"
            "websocket_api:\n"
            "config:\n"
            "onboarding:\n"
            "auth:\n"
            "mqtt:\n"
            "sensor:\n"
            "binary_sensor:\n"
            "switch:\n"
            "logger:\n"
            "  default: warning\n"
            "  logs:\n"
            "    homeassistant.components.mqtt: info\n"
        )
        # Mark every onboarding step but the user step done, so creating the owner
        # through the API completes onboarding without the core_config step (which
        # would set up met/radio_browser/google_translate: network, extra packages).
        (self.config_dir / ".storage" / "onboarding").write_text(json.dumps({
            "version": 4, "minor_version": 1, "key": "onboarding",
            "data": {"done": ["core_config", "analytics", "integration"]},
        }))

    def start(self) -> None:
        self.write_config()
        cmd = [self.python, "-m", "homeassistant", "--config", str(self.config_dir),
               "--skip-pip", "--log-no-color", "--log-file", str(self.log_file)]
        log(f"starting Home Assistant: {' '.join(cmd)}")
        self.proc = subprocess.Popen(
            cmd, cwd=self.config_dir, stdout=subprocess.DEVNULL,
            stderr=open(self.config_dir / "stderr.log", "wb"), start_new_session=True,
        )

    def stop(self) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            log("Home Assistant did not stop within 60 s; killing it")
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- HTTP
    def request(self, method: str, path: str, body: Any = None, form: dict[str, str] | None = None,
                auth: bool = True, timeout: float = 30) -> tuple[int, Any]:
        headers: dict[str, str] = {}
        data: bytes | None = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if auth and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as err:
            raw = err.read()
            status = err.code
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, result = self.request(method, path, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path} -> HTTP {status}: {result}")
        return result

    def wait_up(self, timeout: float) -> None:
        def probe() -> bool:
            if not self.alive():
                raise RuntimeError(f"Home Assistant exited with {self.proc.returncode if self.proc else '?'}:\n"
                                   f"{self.log_tail()}")
            status, _ = self.request("GET", "/api/onboarding", auth=False, timeout=5)
            return status == 200
        wait_for("Home Assistant's HTTP API", timeout, probe)

    def onboard(self) -> None:
        status, result = self.request("POST", "/api/onboarding/users", {
            "client_id": self.client_id, "name": "pbx2mqtt check", "username": "check",
            "password": "".join(random.choices(string.ascii_letters + string.digits, k=24)),
            "language": "en",
        }, auth=False)
        if status != 200 or "auth_code" not in (result or {}):
            raise RuntimeError(f"onboarding the owner failed: HTTP {status}: {result}")
        status, tokens = self.request("POST", "/auth/token", form={
            "grant_type": "authorization_code", "code": result["auth_code"], "client_id": self.client_id,
        }, auth=False)
        if status != 200:
            raise RuntimeError(f"exchanging the auth code failed: HTTP {status}: {tokens}")
        self.token = tokens["access_token"]
        self.refresh_token = tokens.get("refresh_token", "")
        # Should be complete now (see write_config); finish what is not, but never
        # core_config (it sets up integrations that reach the internet).
        _, steps = self.request("GET", "/api/onboarding")
        for step in steps or []:
            if step["done"]:
                continue
            if step["step"] == "analytics":
                self.ok("POST", "/api/onboarding/analytics", {})
            elif step["step"] == "integration":
                self.ok("POST", "/api/onboarding/integration",
                        {"client_id": self.client_id, "redirect_uri": f"{self.client_id}?auth_callback=1"})
        self.version = self.ok("GET", "/api/config").get("version", "")

    def setup_mqtt(self, host: str, port: int, prefix: str, birth_topic: str) -> str:
        flow = self.ok("POST", "/api/config/config_entries/flow", {"handler": "mqtt", "show_advanced_options": False})
        if flow.get("type") == "abort":
            raise RuntimeError(f"MQTT config flow aborted: {flow.get('reason')}")
        result = self.ok("POST", f"/api/config/config_entries/flow/{flow['flow_id']}", {"broker": host, "port": port})
        if result.get("type") != "create_entry":
            raise RuntimeError(f"MQTT config flow did not create an entry (HA could not connect to "
                               f"{host}:{port}?): {result.get('errors') or result}")
        entry_id = result["result"]["entry_id"]
        if prefix != "homeassistant" or birth_topic != "homeassistant/status":
            opt = self.ok("POST", "/api/config/config_entries/options/flow", {"handler": entry_id})
            opt = self.ok("POST", f"/api/config/config_entries/options/flow/{opt['flow_id']}",
                          {"broker": host, "port": port})
            if opt.get("step_id") != "options":
                raise RuntimeError(f"unexpected MQTT options flow step: {opt}")
            done = self.ok("POST", f"/api/config/config_entries/options/flow/{opt['flow_id']}", {
                "discovery": True, "discovery_prefix": prefix,
                "birth_enable": True, "birth_topic": birth_topic, "birth_payload": "online",
                "birth_qos": 0, "birth_retain": False,
                "will_enable": True, "will_topic": birth_topic, "will_payload": "offline",
                "will_qos": 0, "will_retain": False,
            })
            if done.get("type") != "create_entry":
                raise RuntimeError(f"MQTT options flow failed: {done}")
        return entry_id

    # -- websocket (aiohttp comes with HA)
    def ws(self, *commands: dict[str, Any]) -> list[Any]:
        import asyncio

        import aiohttp

        async def run() -> list[Any]:
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(f"{self.base}/api/websocket", timeout=30) as ws:
                    await ws.receive_json()  # auth_required
                    await ws.send_json({"type": "auth", "access_token": self.token})
                    auth = await ws.receive_json()
                    if auth.get("type") != "auth_ok":
                        raise RuntimeError(f"websocket auth failed: {auth}")
                    out = []
                    for i, cmd in enumerate(commands, start=1):
                        await ws.send_json({"id": i, **cmd})
                        while True:
                            msg = await ws.receive_json(timeout=30)
                            if msg.get("id") == i and msg.get("type") == "result":
                                break
                        if not msg.get("success"):
                            raise RuntimeError(f"websocket {cmd['type']} failed: {msg.get('error')}")
                        out.append(msg["result"])
                    return out

        return asyncio.run(run())

    def registries(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        devices, entities = self.ws({"type": "config/device_registry/list"},
                                    {"type": "config/entity_registry/list"})
        return devices, entities

    def states(self) -> dict[str, dict[str, Any]]:
        return {s["entity_id"]: s for s in self.ok("GET", "/api/states")}


# --------------------------------------------------------------------------- expectations


class Expect:
    """What HA must show, derived from the arguments and the retained bridge topics."""

    def __init__(self, args: argparse.Namespace, bus: Mqtt, ha_version: str) -> None:
        self.args = args
        self.bus = bus
        self.node = node_id(args.base_topic)
        self.base = args.base_topic
        m = re.match(r"(\d+)\.(\d+)", ha_version)
        self.ha_ym = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
        # MQTT sensor `options` exists from HA 2024.9 (core PR #123248); older HA drops it.
        self.options_supported = self.ha_ym >= (2024, 9)
        self.statuses = [args.status_map.get(s, s) for s in STATUSES]

    def bridge_device_id(self) -> str:
        return f"{self.node}_bridge"

    def agent_device_id(self, agent: str) -> str:
        return f"{self.node}_agent_{node_id(agent)}"

    def unique_ids(self, agent: str) -> dict[str, str]:
        a = node_id(agent)
        ids = {
            "status": f"{self.node}_{a}_status",
            "on_a_call": f"{self.node}_{a}_on_a_call",
            "status_since": f"{self.node}_{a}_status_since",
        }
        for q in self.args.queue_list:
            ids[f"queue_{q}"] = f"{self.node}_{a}_queue_{q}"
        return ids

    def all_unique_ids(self) -> dict[str, tuple[str, str]]:
        out = {f"{self.node}_bridge_connection": ("bridge", "connection")}
        for agent in self.args.agent_list:
            for key, uid in self.unique_ids(agent).items():
                out[uid] = (agent, key)
        return out

    def agent_state(self, agent: str) -> dict[str, Any] | None:
        return self.bus.get_json(f"{self.base}/agent/{agent}")

    def membership(self, agent: str) -> dict[str, Any] | None:
        return self.bus.get_json(f"{self.base}/agent/{agent}/queues")

    def expected_state(self, agent: str, key: str) -> str | None:
        """The HA state string this entity must have now, or None if the bridge has not published it."""
        if agent == "bridge":
            raw = self.bus.get(f"{self.base}/bridge/state")
            return None if raw is None else ("on" if raw == b"online" else "off")
        if key.startswith("queue_"):
            m = self.membership(agent)
            if m is None:
                return None
            return "on" if key[len("queue_"):] in [str(q) for q in (m.get("queues") or [])] else "off"
        s = self.agent_state(agent)
        if s is None:
            return None
        if key == "status":
            return self.args.status_map.get(s.get("status"), s.get("status"))
        if key == "on_a_call":
            return "on" if s.get("on_a_call") else "off"
        if key == "status_since":
            since = s.get("since")
            if not since:
                return None
            t = dt.datetime.fromisoformat(since.replace("Z", "+00:00"))
            return t.astimezone(dt.timezone.utc).replace(microsecond=0).isoformat()
        return None

    def expected_name(self, agent: str, key: str) -> str:
        if agent == "bridge":
            return "Connection"
        return {"status": "Status", "on_a_call": "On a call", "status_since": "Status since"}.get(
            key, f"In queue {key[len('queue_'):]}")

    def device_name(self, agent: str) -> str | None:
        s = self.agent_state(agent)
        return (s or {}).get("name") or agent


def check_everything(ha: HomeAssistant, exp: Expect) -> tuple[list[str], dict[str, Any]]:
    """Compare HA with the expectations. Returns (problems, details)."""
    problems: list[str] = []
    devices, entities = ha.registries()
    states = ha.states()
    by_uid = {e["unique_id"]: e for e in entities if e.get("platform") == "mqtt"}
    dev_by_ident: dict[str, dict[str, Any]] = {}
    for d in devices:
        for domain, ident in d.get("identifiers", []):
            if domain == "mqtt":
                dev_by_ident[ident] = d
    details: dict[str, Any] = {"entities": [], "devices": []}

    bridge_dev = dev_by_ident.get(exp.bridge_device_id())
    if not bridge_dev:
        problems.append(f"no bridge device with identifier {exp.bridge_device_id()!r}")
    else:
        details["devices"].append(_dev_summary(bridge_dev, None))

    for agent in exp.args.agent_list:
        dev = dev_by_ident.get(exp.agent_device_id(agent))
        if not dev:
            problems.append(f"no device with identifier {exp.agent_device_id(agent)!r} for agent {agent}")
            continue
        details["devices"].append(_dev_summary(dev, bridge_dev))
        want_name = exp.device_name(agent)
        if dev.get("name") != want_name:
            problems.append(f"device of {agent}: name {dev.get('name')!r}, expected {want_name!r} (the state's name)")
        if bridge_dev and dev.get("via_device_id") != bridge_dev["id"]:
            problems.append(f"device of {agent}: via_device_id {dev.get('via_device_id')!r} is not the bridge device "
                            f"{bridge_dev['id']!r} (via_device must name an identifier of the bridge device, "
                            "and the bridge device must exist when the agent device is created)")

    for uid, (agent, key) in exp.all_unique_ids().items():
        ent = by_uid.get(uid)
        if not ent:
            problems.append(f"no entity with unique_id {uid!r} ({agent} {key})")
            continue
        eid = ent["entity_id"]
        st = states.get(eid)
        summary = {"entity_id": eid, "unique_id": uid, "state": st and st["state"],
                   "attributes": st and st["attributes"]}
        details["entities"].append(summary)
        if st is None:
            problems.append(f"{eid}: in the registry but has no state")
            continue
        attrs = st["attributes"]
        dev = dev_by_ident.get(exp.bridge_device_id() if agent == "bridge" else exp.agent_device_id(agent))
        if dev and ent.get("device_id") != dev["id"]:
            problems.append(f"{eid}: belongs to device {ent.get('device_id')!r}, not to {dev.get('name')!r}")
        domain = eid.split(".", 1)[0]
        want_domain = {"status": "sensor", "status_since": "sensor", "on_a_call": "binary_sensor",
                       "connection": "binary_sensor"}.get(key, "switch")
        if domain != want_domain:
            problems.append(f"{eid}: is a {domain}, expected a {want_domain}")
        dev_name = dev.get("name") if dev else None
        want_friendly = f"{dev_name} {exp.expected_name(agent, key)}" if dev_name else None
        if want_friendly and attrs.get("friendly_name") != want_friendly:
            problems.append(f"{eid}: friendly_name {attrs.get('friendly_name')!r}, expected {want_friendly!r}")
        want_class = {"status": "enum", "status_since": "timestamp", "connection": "connectivity"}.get(key)
        if attrs.get("device_class") != want_class:
            problems.append(f"{eid}: device_class {attrs.get('device_class')!r}, expected {want_class!r}")
        if key == "status":
            if "options" in attrs and attrs["options"] != exp.statuses:
                problems.append(f"{eid}: options {attrs['options']!r}, expected {exp.statuses!r}")
            elif "options" not in attrs and exp.options_supported:
                problems.append(f"{eid}: no options attribute (HA >= 2024.9 supports `options` on MQTT sensors)")
        want_state = exp.expected_state(agent, key)
        if want_state is None:
            problems.append(f"{eid}: the bridge has not published the topic this entity reads "
                            f"({'bridge/state' if agent == 'bridge' else 'agent/' + agent + (' /queues' if key.startswith('queue_') else '')})")
        elif st["state"] != want_state:
            problems.append(f"{eid}: state {st['state']!r}, expected {want_state!r}")
        if key == "status" and st["state"] not in exp.statuses:
            problems.append(f"{eid}: state {st['state']!r} is not one of the statuses")

    # Nothing else of this bridge: no strays from stale retained configs, no absent agents.
    expected = set(exp.all_unique_ids())
    for uid, ent in by_uid.items():
        if uid.startswith(f"{exp.node}_") and uid not in expected:
            problems.append(f"unexpected entity {ent['entity_id']} (unique_id {uid!r}): a stale retained config?")
    wanted_devices = {exp.bridge_device_id(), *(exp.agent_device_id(a) for a in exp.args.agent_list)}
    for ident, dev in dev_by_ident.items():
        if ident.startswith(f"{exp.node}_") and ident not in wanted_devices:
            problems.append(f"unexpected device {dev.get('name')!r} (identifier {ident!r})")
    for agent in exp.args.absent_list:
        if exp.agent_device_id(agent) in dev_by_ident:
            problems.append(f"absent agent {agent} still has a device")
    return problems, details


def _dev_summary(dev: dict[str, Any], bridge: dict[str, Any] | None) -> dict[str, Any]:
    return {k: dev.get(k) for k in ("id", "name", "manufacturer", "model", "sw_version", "identifiers",
                                     "via_device_id", "entry_type")} | (
        {"via_bridge": bridge is not None and dev.get("via_device_id") == bridge["id"]} if bridge else {})


def log_problems(ha: HomeAssistant) -> list[str]:
    out = []
    try:
        text = ha.log_file.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if not (" WARNING " in line or " ERROR " in line or " CRITICAL " in line):
            continue
        if any(b in line for b in BENIGN_LOG):
            continue
        if WATCHED_LOGGERS.search(line) or "discovery" in line.lower():
            out.append(line[:600])
    return out


# --------------------------------------------------------------------------- fake bridge


class FakeBridge:
    """Publishes example_discovery.json under a new base topic/prefix and answers switch commands."""

    def __init__(self, path: Path, bus: Mqtt, base: str, prefix: str, birth_topic: str) -> None:
        self.doc = json.loads(path.read_text())
        self.bus = bus
        self.src_base = self.doc["base_topic"]
        self.src_prefix = self.doc["discovery_prefix"]
        self.base = base
        self.prefix = prefix
        self.birth_topic = birth_topic
        self.published: list[str] = []
        self.messages = [self._rename(m) for m in self.doc["messages"]]
        self.members: dict[str, dict[str, Any]] = {}
        for m in self.messages:
            if m["topic"].startswith(f"{base}/agent/") and m["topic"].endswith("/queues"):
                self.members[m["payload"]["agent"]] = dict(m["payload"])
        self.commands: list[dict[str, Any]] = []
        self.removed: list[str] = []

    def _rename_str(self, s: str, is_topic: bool) -> str:
        src_node, node = node_id(self.src_base), node_id(self.base)
        if is_topic and s.startswith(f"{self.src_prefix}/") and s.endswith("/config"):
            parts = s.split("/")
            parts[0] = self.prefix
            if len(parts) == 5 and parts[2] == src_node:
                parts[2] = node
            return "/".join(parts)
        if s.startswith(f"{self.src_base}/"):
            return self.base + s[len(self.src_base):]
        return s.replace(f"{src_node}_", f"{node}_")

    def _rename(self, value: Any, key: str = "topic") -> Any:
        if isinstance(value, str):
            return self._rename_str(value, key == "topic" or key.endswith("_topic"))
        if isinstance(value, list):
            return [self._rename(v, key) for v in value]
        if isinstance(value, dict):
            return {k: self._rename(v, k) for k, v in value.items()}
        return value

    def config_topics(self, agent: str | None = None) -> list[str]:
        node_agent = node_id(agent) if agent else None
        return [m["topic"] for m in self.messages if m["topic"].endswith("/config")
                and (node_agent is None or m["topic"].split("/")[-2].startswith(f"{node_agent}_"))]

    def start(self) -> None:
        self.bus.subscribe(f"{self.base}/request/queue/+/set", self._on_command)
        self.bus.subscribe(self.birth_topic, self._on_birth)
        self._publish(self.messages)
        log(f"fake bridge published {len(self.messages)} messages under {self.base}/ and {self.prefix}/")

    def _publish(self, messages: list[dict[str, Any]]) -> None:
        for m in messages:
            payload = m["payload"]
            raw = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
            self.bus.publish(m["topic"], raw, retain=bool(m.get("retain")))
            if m.get("retain") and m["topic"] not in self.published:
                self.published.append(m["topic"])

    def _on_birth(self, topic: str, payload: bytes, retain: bool) -> None:
        # What pbx2mqtt does (product.md 7.2): republish the discovery configs when HA comes online.
        if payload == b"online" and not retain:
            removed = set(self.removed)
            self._publish([m for m in self.messages if m["topic"].endswith("/config") and m["topic"] not in removed])
            log("fake bridge republished its discovery configs after HA's birth message")

    def _on_command(self, topic: str, payload: bytes, retain: bool) -> None:
        queue = topic.split("/")[-2]
        cmd = json.loads(payload)
        self.commands.append({"topic": topic, "payload": payload.decode(), "retain": retain})
        log(f"fake bridge got {topic} {payload.decode()} (retain={retain})")
        agent = cmd["agent"]
        m = self.members.setdefault(agent, {"agent": agent, "queues": []})
        queues = [q for q in m.get("queues", []) if q != queue]
        if cmd.get("member"):
            queues.append(queue)
        m["queues"] = sorted(queues)
        m["updated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        self.bus.publish(f"{self.base}/agent/{agent}/queues", json.dumps(m, separators=(",", ":")), retain=True)
        self.bus.publish(f"{self.base}/response/queue/{queue}/set",
                         json.dumps({"status": "ok", "data": {"agent": agent, "queue": queue,
                                                              "member": bool(cmd.get("member"))}}))

    def remove_agent(self, agent: str) -> list[str]:
        topics = self.config_topics(agent)
        self.removed.extend(topics)
        for t in topics:
            self.bus.publish(t, b"", retain=True)
        return topics

    def cleanup(self) -> None:
        for t in self.published:
            self.bus.publish(t, b"", retain=True)
        for agent in self.members:
            self.bus.publish(f"{self.base}/agent/{agent}/queues", b"", retain=True)


# --------------------------------------------------------------------------- screenshot


def screenshot(ha: HomeAssistant, device_id: str, device_name: str, out: str, chromium: str, timeout: float,
               wait_text: list[str]) -> str:
    if not Path(chromium).exists():
        return f"skipped: {chromium} not found (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return f"skipped: playwright is not installed in {sys.executable} (pip install playwright)"
    tokens = {
        "access_token": ha.token, "token_type": "Bearer", "expires_in": 1800,
        "hassUrl": ha.base, "clientId": ha.client_id, "refresh_token": ha.refresh_token,
        "expires": int(time.time() * 1000) + 1800 * 1000,
    }
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.add_init_script(f"window.localStorage.setItem('hassTokens', {json.dumps(json.dumps(tokens))});")
            page.goto(f"{ha.base}/config/devices/device/{device_id}", timeout=timeout * 1000)
            # The frontend renders in shadow DOM; playwright's text selector pierces it.
            for text in [device_name, *wait_text]:
                page.wait_for_selector(f"text={text}", timeout=timeout * 1000)
            page.wait_for_load_state("networkidle", timeout=timeout * 1000)
            page.screenshot(path=out, full_page=True)
        finally:
            browser.close()
    return out


# --------------------------------------------------------------------------- main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    ha_python, ha_prefix = resolve_ha_python(args.ha_python)
    if os.environ.get(REEXEC_ENV) != "1" and Path(sys.prefix).resolve() != Path(ha_prefix).resolve():
        # Run the rest inside HA's venv: it has paho-mqtt, aiohttp (and maybe playwright).
        os.environ[REEXEC_ENV] = "1"
        os.execv(ha_python, [ha_python, str(Path(__file__).resolve()), *argv])

    started = time.monotonic()
    summary: dict[str, Any] = {"ok": False, "problems": [], "broker": f"{args.host}:{args.port}"}
    try:
        with socket.create_connection((args.host, args.port), timeout=5):
            pass
    except OSError as err:
        print(f"FAIL: the MQTT broker at {args.host}:{args.port} is not reachable: {err}")
        return 1

    tag = f"{os.getpid()}_{random.randrange(16**6):06x}"
    bus = Mqtt(args.host, args.port, f"ha-check-{tag}")
    fake: FakeBridge | None = None
    if args.fake_bridge:
        doc = json.loads(Path(args.fake_bridge).read_text())
        if args.base_topic == "pbx2mqtt":
            args.base_topic = f"pbx2mqtt_hacheck_{tag}"
        if args.discovery_prefix == "homeassistant":
            args.discovery_prefix = f"ha_hacheck_{tag}"
        args.agent_list = args.agent_list or list(doc["agents"])
        args.queue_list = args.queue_list or list(doc["queues"])
    birth_topic = args.birth_topic or f"{args.discovery_prefix}/status"
    summary.update(base_topic=args.base_topic, discovery_prefix=args.discovery_prefix, birth_topic=birth_topic,
                   agents=list(args.agent_list), queues=list(args.queue_list))

    config_dir = Path(tempfile.mkdtemp(prefix="ha-check-"))
    ha = HomeAssistant(ha_python, config_dir, free_port())
    try:
        # Watch what HA and the bridge say, from before HA connects.
        bus.subscribe(birth_topic)
        bus.subscribe(f"{args.base_topic}/#")
        bus.subscribe(f"{args.discovery_prefix}/+/+/+/config")
        bus.subscribe(f"{args.discovery_prefix}/+/+/config")
        if args.fake_bridge:
            fake = FakeBridge(Path(args.fake_bridge), bus, args.base_topic, args.discovery_prefix, birth_topic)
            fake.start()

        t0 = time.monotonic()
        entry_at = time.time()
        if args.mqtt_setup == "seed":
            entry_id = ha.seed_mqtt_entry(args.host, args.port, args.discovery_prefix, birth_topic)
        ha.start()
        ha.wait_up(args.start_timeout)
        ha.onboard()
        summary["ha_version"] = ha.version
        log(f"Home Assistant {ha.version} is up on {ha.base} after {time.monotonic() - t0:.1f}s; onboarded")
        if args.mqtt_setup == "flow":
            entry_at = time.time()
            entry_id = ha.setup_mqtt(args.host, args.port, args.discovery_prefix, birth_topic)
        entries = ha.ok("GET", "/api/config/config_entries/entry?domain=mqtt")
        state = next((e["state"] for e in entries if e["entry_id"] == entry_id), "missing")
        log(f"MQTT config entry {entry_id} ({args.mqtt_setup}) is {state} (broker {args.host}:{args.port}, "
            f"prefix {args.discovery_prefix!r}, birth {birth_topic!r})")
        summary["mqtt_setup"] = args.mqtt_setup
        births = wait_for(f"HA's birth message 'online' on {birth_topic}", args.start_timeout,
                          lambda: [t for t, _, p, _ in bus.messages(birth_topic, since=entry_at) if p == b"online"])
        birth_at = births[0]
        summary["seconds_to_mqtt_connected"] = round(time.monotonic() - t0, 1)
        log(f"HA is connected to MQTT (birth seen on {birth_topic})")

        # The discovery configs must be retained (HA rediscovers from them after a restart).
        summary["discovery_topics"] = retained_configs(args, tag)
        live = sorted({t for _, t, p, _ in bus.messages(f"{args.discovery_prefix}/#") if p and t.endswith("/config")})
        not_retained = [t for t in live if t not in summary["discovery_topics"]]
        if not_retained:
            summary["problems"].append(f"discovery configs published but not retained: {not_retained}")

        exp = Expect(args, bus, ha.version)
        last: list[str] = []

        if args.check_birth_republish:
            want = len(exp.all_unique_ids())

            def republished() -> list[str]:
                topics = {t for _, t, p, _ in bus.messages(f"{args.discovery_prefix}/#", since=birth_at)
                          if p and t.endswith("/config")}
                return sorted(topics) if len(topics) >= want else []
            try:
                summary["republished_after_birth"] = wait_for(
                    f"the bridge to republish its {want} discovery configs after HA's birth message",
                    args.timeout, republished)
            except TimeoutError as err:
                summary["problems"].append(str(err))

        def all_good() -> bool:
            nonlocal last
            last, _ = check_everything(ha, exp)
            return not last

        try:
            wait_for("every expected entity, device and state", args.timeout, all_good, interval=0.5)
        except TimeoutError as err:
            summary["problems"].append(str(err))
        problems, details = check_everything(ha, exp)
        summary["problems"].extend(problems)
        summary.update(details)
        log(f"checked {len(details['entities'])} entities and {len(details['devices'])} devices: "
            f"{'ok' if not problems else str(len(problems)) + ' problem(s)'}")

        if args.toggle is not None and not problems:
            summary["toggle"] = toggle(ha, exp, bus, args)
            if summary["toggle"].get("problem"):
                summary["problems"].append(summary["toggle"]["problem"])

        if args.screenshot:
            agent = args.agent_list[0]
            dev = next((d for d in details["devices"]
                        if ["mqtt", exp.agent_device_id(agent)] in (d["identifiers"] or [])), None)
            if dev:
                try:
                    summary["screenshot"] = screenshot(
                        ha, dev["id"], dev["name"], args.screenshot, args.chromium, args.timeout,
                        ["Status since", *(["In queue"] if args.queue_list else [])])
                except Exception as err:  # noqa: BLE001 - a screenshot is a bonus, not a check
                    summary["screenshot"] = f"failed: {err}"
            else:
                summary["screenshot"] = "skipped: no device to show"
            log(f"screenshot: {summary['screenshot']}")

        if fake and args.check_removal:
            summary["removal"] = check_removal(ha, exp, fake, args.check_removal, args.timeout)
            if summary["removal"].get("problem"):
                summary["problems"].append(summary["removal"]["problem"])

        if fake:
            summary["commands_seen"] = fake.commands
        lp = log_problems(ha)
        summary["ha_log_problems"] = lp
        if lp and not args.allow_log_problems:
            summary["problems"].append(f"{len(lp)} warning/error line(s) from HA's MQTT/entity loggers (ha_log_problems)")
    except Exception as err:  # noqa: BLE001 - everything ends in the summary
        summary["problems"].append(f"{type(err).__name__}: {err}")
        summary["ha_log_tail"] = ha.log_tail(60).splitlines()
    finally:
        ha.stop()
        if fake:
            fake.cleanup()
        bus.close()
        if args.keep:
            summary["ha_config_dir"] = str(config_dir)
        else:
            shutil.rmtree(config_dir, ignore_errors=True)

    summary["ok"] = not summary["problems"]
    summary["seconds"] = round(time.monotonic() - started, 1)
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if args.json_out:
        Path(args.json_out).write_text(text + "\n")
    if summary["ok"]:
        print(f"PASS: Home Assistant {summary.get('ha_version')} shows {len(summary['agents'])} agent device(s) "
              f"and the bridge, {len(summary.get('entities', []))} entities, all as the bridge publishes them"
              + ("; the queue switch follows membership" if "toggle" in summary else "")
              + (f"; removing {args.check_removal} removed its device" if args.check_removal else ""))
        return 0
    for p in summary["problems"]:
        print(f"FAIL: {p}")
    return 1


def retained_configs(args: argparse.Namespace, tag: str) -> list[str]:
    """The config topics the broker holds retained, read by a fresh subscriber."""
    bus = Mqtt(args.host, args.port, f"ha-check-retained-{tag}")
    try:
        marker = f"{args.discovery_prefix}/_ha_check/{tag}/marker"
        bus.subscribe(f"{args.discovery_prefix}/#")
        bus.subscribe(marker)
        # The broker sends retained messages when it handles SUBSCRIBE, so once our
        # own marker comes back every retained config has been delivered.
        bus.publish(marker, b"x")
        wait_for("the retained-config marker", 10, lambda: bus.get(marker))
        # Any retained copy counts: a bridge republishing at this moment (it
        # answers HA's birth) sends live copies too, which must not hide the
        # retained ones.
        return sorted({t for _, t, p, retained in bus.messages(f"{args.discovery_prefix}/#")
                       if retained and p and t.endswith("/config")})
    finally:
        bus.close()


def toggle(ha: HomeAssistant, exp: Expect, bus: Mqtt, args: argparse.Namespace) -> dict[str, Any]:
    spec = args.toggle or f"{args.agent_list[0]}:{args.queue_list[0] if args.queue_list else ''}"
    agent, _, queue = spec.partition(":")
    if not queue:
        return {"problem": "--toggle needs a queue (none in --queues)"}
    uid = exp.unique_ids(agent).get(f"queue_{queue}")
    _, entities = ha.registries()
    ent = next((e for e in entities if e.get("unique_id") == uid), None)
    if not ent:
        return {"problem": f"--toggle: no switch with unique_id {uid!r}"}
    eid = ent["entity_id"]
    result: dict[str, Any] = {"entity_id": eid, "steps": []}
    for _ in range(2):
        before = ha.states()[eid]["state"]
        service = "turn_off" if before == "on" else "turn_on"
        want = "off" if before == "on" else "on"
        since = time.time()
        t = time.monotonic()
        ha.ok("POST", f"/api/services/switch/{service}", {"entity_id": eid})
        step: dict[str, Any] = {"service": f"switch.{service}", "from": before}
        try:
            wait_for(f"{eid} to become {want} after switch.{service}", args.timeout,
                     lambda: ha.states()[eid]["state"] == want)
            step["seconds"] = round(time.monotonic() - t, 2)
        except TimeoutError as err:
            step["problem"] = str(err)
        sent = [(tp, p.decode(errors="replace"), r) for _, tp, p, r in bus.messages(f"{args.base_topic}/request/#", since)]
        step["command_messages"] = [{"topic": tp, "payload": p, "retain": r} for tp, p, r in sent]
        result["steps"].append(step)
        if "problem" in step:
            result["problem"] = f"{step['problem']} (HA published: {step['command_messages'] or 'nothing'})"
            break
        if any(r for _, _, r in sent):
            result["problem"] = f"HA published a retained command: {sent}"
            break
    log(f"toggle {eid}: {'ok' if 'problem' not in result else result['problem']}")
    return result


def check_removal(ha: HomeAssistant, exp: Expect, fake: FakeBridge, agent: str, timeout: float) -> dict[str, Any]:
    topics = fake.remove_agent(agent)
    uids = set(exp.unique_ids(agent).values())

    def gone() -> bool:
        devices, entities = ha.registries()
        states = ha.states()
        ents = [e for e in entities if e.get("unique_id") in uids]
        devs = [d for d in devices if ["mqtt", exp.agent_device_id(agent)] in d.get("identifiers", [])]
        return not ents and not devs and not any(e["entity_id"] in states for e in ents)

    result: dict[str, Any] = {"agent": agent, "cleared_topics": topics}
    t = time.monotonic()
    try:
        wait_for(f"entities and device of {agent} to disappear after empty retained configs", timeout, gone)
        result["seconds"] = round(time.monotonic() - t, 2)
        exp.args.agent_list = [a for a in exp.args.agent_list if a != agent]
        exp.args.absent_list = [*exp.args.absent_list, agent]
        problems, _ = check_everything(ha, exp)
        if problems:
            result["problem"] = f"after removing {agent}: {problems}"
    except TimeoutError as err:
        result["problem"] = str(err)
    log(f"removal of {agent}: {'ok' if 'problem' not in result else result['problem']}")
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
