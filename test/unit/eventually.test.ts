import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { EventuallyTimeoutError, eventually, until } from "../helpers/eventually.js";

void describe("eventually", () => {
  void it("resolves with the value of the first call that does not throw", async () => {
    let calls = 0;
    const v = await eventually(
      () => {
        calls++;
        assert.ok(calls >= 3, `call ${calls}`);
        return `done after ${calls}`;
      },
      { intervalMs: 1 },
    );
    assert.equal(v, "done after 3");
    assert.equal(calls, 3);
  });

  void it("fails after the deadline naming what it waited for and the last error", async () => {
    let calls = 0;
    const err = await eventually(
      () => {
        calls++;
        throw new Error(`not yet (${calls})`);
      },
      { what: "the thing", timeoutMs: 30, intervalMs: 5 },
    ).catch((e: unknown) => e);
    assert.ok(err instanceof EventuallyTimeoutError);
    assert.match(err.message, /^timed out after 30 ms \(\d+ checks\) waiting for the thing; last seen: /);
    assert.match(err.message, new RegExp(`Error: not yet \\(${calls}\\)$`), "the last error, not the first");
    assert.ok(err.cause instanceof Error);
    assert.equal(err.cause.message, `not yet (${calls})`);
    assert.equal(err.attempts, calls);
  });

  void it("takes a number as the timeout and names the condition by its source when not told", async () => {
    const started = Date.now();
    const err = await eventually(() => assert.equal(1 + 1, 3), 20).catch((e: unknown) => e);
    assert.ok(Date.now() - started >= 20);
    assert.ok(err instanceof EventuallyTimeoutError);
    // The source as the loader compiled it (tsx may drop the spaces).
    assert.match(
      err.message,
      /waiting for \(\)\s*=>\s*assert\.equal\(1\s*\+\s*1,\s*3\); last seen: AssertionError/,
    );
  });
});

void describe("until", () => {
  void it("resolves with the first truthy value; falsy values and errors mean not yet", async () => {
    const answers: unknown[] = [undefined, false, new Error("boom"), 0, { ok: 1 }];
    const v = await until(
      "an answer",
      () => {
        const a = answers.shift();
        if (a instanceof Error) throw a;
        return a as { ok: number } | undefined | false;
      },
      { intervalMs: 1 },
    );
    assert.deepEqual(v, { ok: 1 });
    assert.equal(answers.length, 0);
  });

  void it("fails after the deadline naming what it waited for and the last value", async () => {
    const err = await until("the flag", () => false, 20).catch((e: unknown) => e);
    assert.ok(err instanceof EventuallyTimeoutError);
    assert.match(err.message, /waiting for the flag; last seen: the condition returned false$/);
    assert.equal(err.cause, undefined);
  });
});
