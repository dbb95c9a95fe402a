"""The tools a tool task's agent offered outlive the worker that saw them.

`/v1/classify` on a tool task asks the teacher with the tools the agent offered last
when its caller gives none. They are kept in the store, so another worker, or this one
after a restart, has them too.
"""

from __future__ import annotations

import sqlite3

import httpx
import openai

from proxy.sim.synthetic import TOOL_SCHEMAS, make_tool_steps
from proxy.sim.teacher import SimulatedTeacher, run_sim_teacher
from tests.support import intents_config, running_proxy

STEPS = make_tool_steps(20, seed=4)
TEXTS = list(STEPS)


def test_classify_uses_the_tools_an_earlier_proxy_saw(tmp_path):
    sim = SimulatedTeacher({}, tool_answers=STEPS)
    names = sorted(t["function"]["name"] for t in TOOL_SCHEMAS)
    with run_sim_teacher(sim) as url:
        config = intents_config(url, tmp_path, task={"kind": "tools", "labels": None})
        with running_proxy(config) as base:  # no tools seen yet: the caller must give them
            reply = httpx.post(f"{base}/classify", json={"task": "intents", "input": TEXTS[0]})
            assert reply.status_code == 400 and "give `tools`" in reply.json()["error"]["message"]
            with openai.OpenAI(base_url=base, api_key="x", max_retries=0) as client:
                for text in TEXTS[:3]:  # the same tools each time: stored once
                    client.chat.completions.create(
                        model="intents",
                        messages=[{"role": "user", "content": text}],
                        tools=TOOL_SCHEMAS,
                    )
        with running_proxy(config) as base:  # a new process on the same store
            reply = httpx.post(f"{base}/classify", json={"task": "intents", "input": TEXTS[5]})
            assert reply.status_code == 200, reply.text
            assert sorted(sim.stats()["chat_requests"][-1]["tools"]) == names
    with sqlite3.connect(tmp_path / "tracer.db") as db:
        assert db.execute("SELECT count(*) FROM tool_lists").fetchone() == (1,)
