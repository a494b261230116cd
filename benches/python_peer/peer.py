#!/usr/bin/env python3
"""The plain Python peer of pbx2mqtt's benchmark (product.md §8).

This is what a user would write instead of pbx2mqtt: one thread, one loop
over all agents, repeated. Per agent it asks the Belfabriek API
`ivr.getAgentAvail` (and, when the agent is available,
`general.getExtensionStatus`) over XML-RPC with `xmlrpc.client` on a
keep-alive `requests.Session`, derives the status as product.md §1 does, and
on a change of status closes the agent's open interval in SQLite and opens
a new one (WAL, synchronous=FULL, one commit per transition), then publishes
the retained JSON state, the bare status and a QoS 1 JSON event with
paho-mqtt (its network thread started with `loop_start`, as users do).

One warm-up round over all agents is not timed (it opens every agent's
first interval). Then the loop runs for `--duration` seconds and prints one
JSON line to stdout:

    {"polls":N,"polls_per_s":x,"requests":N,"transitions":N,"errors":N,
     "cpu_s":x,"wall_s":x}

`polls` counts agent-polls attempted in the timed window (one
`ivr.getAgentAvail` each), `requests` the HTTP requests (one or two per
poll), `errors` the polls that failed (HTTP error, XML-RPC fault, bad body),
`cpu_s` the CPU time of this process (all threads) in the window.

Agents are the simulator's: `--agents N` from `--first-extension`
(Belfabriek extension ids 1001, 1002, ...; ids `<id-prefix><extension>`,
`agent1001` as in the pipeline benchmark; supervisor and manager ids empty,
account id = the PIN, as pbx2mqtt's defaults), or the `[[agents]]` tables of
a bridge configuration with `--agents-toml FILE`.

Logs go to stderr; the PIN never appears in them.
"""

import argparse
import json
import logging
import os
import sqlite3
import sys
import threading
import time
import tomllib
import xml.parsers.expat
import xmlrpc.client
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
import requests

log = logging.getLogger("peer")

GET_AGENT_AVAIL = "ivr.getAgentAvail"
GET_EXTENSION_STATUS = "general.getExtensionStatus"

# product.md §1: the reason-to-status mapping when available=0 ...
REASON_STATUS = {"-": "offline", "": "offline", "pause": "paused", "paused": "paused", "handling": "busy"}
# ... and the extension status when available=1 (anything else: available).
EXTENSION_STATUS = {"calling": "ringing", "called": "on_call", "wrapup": "wrapup", "idle": "available"}
ON_A_CALL = {"ringing", "on_call", "busy"}

SCHEMA = """
CREATE TABLE IF NOT EXISTS intervals (
    id INTEGER PRIMARY KEY,
    agent TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    extension_status TEXT,
    destination TEXT,
    started_at INTEGER NOT NULL,
    ended_at INTEGER,
    seq INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS intervals_one_open_per_agent
    ON intervals (agent) WHERE ended_at IS NULL;
"""


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--belfabriek-url", required=True,
                        help="e.g. http://127.0.0.1:8090/xml/agent/xml.asp")
    parser.add_argument("--pin", default=os.environ.get("BELFABRIEK_PIN"),
                        help="Belfabriek account PIN (default: $BELFABRIEK_PIN)")
    parser.add_argument("--account-param", default="accountCode",
                        help="member carrying the PIN (default accountCode)")
    parser.add_argument("--agents", type=int,
                        help="number of agents (required without --agents-toml; "
                             "with it, the first N of the file)")
    parser.add_argument("--first-extension", type=int, default=1001,
                        help="Belfabriek extension id of the first agent (default 1001)")
    parser.add_argument("--id-prefix", default="agent",
                        help="agent id = prefix + extension id (default 'agent')")
    parser.add_argument("--agents-toml", help="read the agents from [[agents]] tables instead")
    parser.add_argument("--mqtt-host", default="127.0.0.1")
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--base-topic", default="pbx2mqtt")
    parser.add_argument("--db", required=True, help="SQLite file (created if missing)")
    parser.add_argument("--duration", type=float, required=True, help="timed seconds")
    parser.add_argument("--timeout", type=float, default=2.0, help="HTTP timeout, seconds")
    parser.add_argument("--stale-after", type=int, default=3,
                        help="failed polls in a row before an agent is 'unknown'")
    args = parser.parse_args()
    if not args.pin:
        parser.error("--pin (or $BELFABRIEK_PIN) is required")
    if args.agents is None and not args.agents_toml:
        parser.error("give --agents N or --agents-toml FILE")
    return args


def load_agents(args):
    """[{id, name, extension_id, sup_id, man_id, cust_id}] in polling order."""
    if args.agents_toml:
        with open(args.agents_toml, "rb") as file:
            tables = tomllib.load(file).get("agents", [])
        if args.agents is not None:
            tables = tables[: args.agents]
        agents = []
        for table in tables:
            agents.append({
                "id": table["id"],
                "name": table.get("name", table["id"]),
                "extension_id": str(table["extension_id"]),
                "sup_id": str(table.get("sup_id", "")),
                "man_id": str(table.get("man_id", "")),
                "cust_id": str(table.get("cust_id", args.pin)),
            })
        return agents
    return [
        {
            "id": f"{args.id_prefix}{ext}",
            "name": f"Agent {ext}",
            "extension_id": str(ext),
            "sup_id": "",
            "man_id": "",
            "cust_id": args.pin,
        }
        for ext in range(args.first_extension, args.first_extension + args.agents)
    ]


def now_iso(ms):
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def member(struct, name):
    """A struct member by name, in any case (None when absent)."""
    for key, value in struct.items():
        if key.lower() == name.lower():
            return value
    return None


class Belfabriek:
    """The two XML-RPC calls over one keep-alive session."""

    def __init__(self, url, pin, account_param, timeout):
        self.url = url
        self.pin = pin
        self.account_param = account_param
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Content-Type"] = "text/xml"
        self.requests = 0

    def call(self, method, struct):
        # Every member a <string>, the request declared ISO-8859-1 (the docs).
        body = xmlrpc.client.dumps((struct,), method, encoding="iso-8859-1")
        self.requests += 1
        response = self.session.post(self.url, data=body.encode("iso-8859-1", "xmlcharrefreplace"),
                                     timeout=self.timeout)
        response.raise_for_status()
        (answer,), _ = xmlrpc.client.loads(response.content)  # raises Fault on <fault>
        if not isinstance(answer, dict):
            raise ValueError(f"{method}: expected a struct, got {type(answer).__name__}")
        return answer

    def reading(self, agent):
        """(available, reason, extension_status, destination) of one agent."""
        avail = self.call(GET_AGENT_AVAIL, {
            self.account_param: self.pin,
            "extensionId": agent["extension_id"],
        })
        raw = member(avail, "available")
        if raw is None:
            raise ValueError("ivr.getAgentAvail: no member 'available'")
        available = str(int(raw) if isinstance(raw, bool) else raw).strip() == "1"
        reason = str(member(avail, "availReason") or "").strip()
        destination = member(avail, "extension") or member(avail, "endpoint")
        extension_status = None
        if available:
            status = self.call(GET_EXTENSION_STATUS, {
                "supId": agent["sup_id"],
                "manId": agent["man_id"],
                "accountCode": agent["cust_id"],
                "extensionId": agent["extension_id"],
            })
            value = member(status, "status")
            if value is None:
                value = member(status, "Available")
            extension_status = None if value is None else str(value).strip().lower()
        return available, reason, extension_status, destination


def derive_status(available, reason, extension_status):
    """product.md §1."""
    if not available:
        return REASON_STATUS.get(reason.lower(), "unavailable")
    return EXTENSION_STATUS.get(extension_status or "idle", "available")


class Peer:
    def __init__(self, args, agents):
        self.args = args
        self.agents = agents
        self.api = Belfabriek(args.belfabriek_url, args.pin, args.account_param, args.timeout)
        self.base = args.base_topic.rstrip("/")

        self.db = sqlite3.connect(args.db)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)
        self.seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM intervals").fetchone()[0]
        # agent id -> current state dict (resumed from the open intervals).
        self.current = {}
        for agent_id, status, reason, ext_status, destination, started_at, seq in self.db.execute(
                "SELECT agent, status, reason, extension_status, destination, started_at, seq "
                "FROM intervals WHERE ended_at IS NULL"):
            self.current[agent_id] = {"status": status, "reason": reason, "extension_status": ext_status,
                                      "destination": destination, "since_ms": started_at, "seq": seq}
        self.failures = {}

        self.connected = threading.Event()
        self.mqtt = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pbx2mqtt-peer-{os.getpid()}")
        self.mqtt.will_set(f"{self.base}/bridge/state", "offline", qos=1, retain=True)
        self.mqtt.on_connect = self.on_connect
        self.last_publish = None

        self.polls = 0
        self.errors = 0
        self.transitions = 0

    def on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("mqtt connect refused: %s", reason_code)
            return
        client.publish(f"{self.base}/bridge/state", "online", qos=1, retain=True)
        self.connected.set()

    def start_mqtt(self):
        self.mqtt.connect(self.args.mqtt_host, self.args.mqtt_port, keepalive=30)
        self.mqtt.loop_start()
        if not self.connected.wait(10):
            raise SystemExit(f"cannot connect to mqtt://{self.args.mqtt_host}:{self.args.mqtt_port}")

    def stop_mqtt(self):
        if self.last_publish is not None:
            self.last_publish.wait_for_publish(10)
        self.mqtt.publish(f"{self.base}/bridge/state", "offline", qos=1, retain=True).wait_for_publish(5)
        self.mqtt.disconnect()
        self.mqtt.loop_stop()

    def poll(self, agent):
        self.polls += 1
        try:
            available, reason, extension_status, destination = self.api.reading(agent)
        except (requests.RequestException, xmlrpc.client.Error, xml.parsers.expat.ExpatError,
                ValueError, TypeError) as error:
            self.errors += 1
            failures = self.failures.get(agent["id"], 0) + 1
            self.failures[agent["id"]] = failures
            if self.errors <= 5:
                log.warning("poll of %s failed: %s", agent["id"], str(error).replace(self.args.pin, "***"))
            if failures == self.args.stale_after:
                self.update(agent, "unknown", None, None, None)
            return
        self.failures[agent["id"]] = 0
        status = derive_status(available, reason, extension_status)
        shown_reason = reason if not available and reason not in ("", "-") else None
        self.update(agent, status, shown_reason, extension_status, destination)

    def update(self, agent, status, reason, extension_status, destination):
        previous = self.current.get(agent["id"])
        now_ms = int(time.time() * 1000)
        if previous is not None and previous["status"] == status:
            if (previous["reason"], previous["extension_status"], previous["destination"]) != \
                    (reason, extension_status, destination):
                # Not a transition: only the state topic changes.
                previous.update(reason=reason, extension_status=extension_status, destination=destination)
                self.publish_state(agent, previous, now_ms)
            return

        self.seq += 1
        with self.db:  # one transaction, committed here
            self.db.execute("UPDATE intervals SET ended_at = ? WHERE agent = ? AND ended_at IS NULL",
                            (now_ms, agent["id"]))
            self.db.execute(
                "INSERT INTO intervals (agent, status, reason, extension_status, destination, started_at, seq) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (agent["id"], status, reason, extension_status, destination, now_ms, self.seq))
        state = {"status": status, "reason": reason, "extension_status": extension_status,
                 "destination": destination, "since_ms": now_ms, "seq": self.seq}
        self.current[agent["id"]] = state
        self.transitions += 1

        self.publish_state(agent, state, now_ms)
        topic = f"{self.base}/agent/{agent['id']}"
        event = {
            "agent": agent["id"],
            "from": previous["status"] if previous else None,
            "to": status,
            "at": now_iso(now_ms),
            "previous_duration_s": (now_ms - previous["since_ms"]) / 1000 if previous else None,
            "seq": self.seq,
        }
        self.last_publish = self.mqtt.publish(f"{topic}/event", json.dumps(event), qos=1)

    def publish_state(self, agent, state, now_ms):
        topic = f"{self.base}/agent/{agent['id']}"
        payload = {
            "agent": agent["id"],
            "name": agent["name"],
            "status": state["status"],
            "on_a_call": state["status"] in ON_A_CALL,
            "available": state["status"] in ("available", "ringing", "on_call", "wrapup"),
            "reason": state["reason"],
            "extension_status": state["extension_status"],
            "destination": state["destination"],
            "since": now_iso(state["since_ms"]),
            "updated": now_iso(now_ms),
            "seq": state["seq"],
        }
        self.mqtt.publish(topic, json.dumps(payload), qos=1, retain=True)
        self.last_publish = self.mqtt.publish(f"{topic}/status", state["status"], qos=1, retain=True)

    def run(self, duration):
        # Warm-up: one round over all agents, not timed.
        for agent in self.agents:
            self.poll(agent)
        log.info("warm-up done: %d agents, %d errors, %d intervals opened",
                 len(self.agents), self.errors, self.transitions)
        self.polls = self.errors = self.transitions = self.api.requests = 0

        cpu_start = time.process_time()
        wall_start = time.monotonic()
        deadline = wall_start + duration
        while time.monotonic() < deadline:
            for agent in self.agents:
                self.poll(agent)
                if time.monotonic() >= deadline:
                    break
        wall = time.monotonic() - wall_start
        cpu = time.process_time() - cpu_start
        return {
            "polls": self.polls,
            "polls_per_s": round(self.polls / wall, 1),
            "requests": self.api.requests,
            "transitions": self.transitions,
            "errors": self.errors,
            "cpu_s": round(cpu, 3),
            "wall_s": round(wall, 3),
        }


def main():
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="peer: %(message)s")
    args = parse_args()
    agents = load_agents(args)
    if not agents:
        raise SystemExit("no agents to poll")
    peer = Peer(args, agents)
    peer.start_mqtt()
    try:
        result = peer.run(args.duration)
    finally:
        peer.stop_mqtt()
        peer.db.close()
    print(json.dumps(result, separators=(",", ":")), flush=True)


if __name__ == "__main__":
    main()
