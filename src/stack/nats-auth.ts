/**
 * NATS credentials of the local stack (and of tests that run nats-server with authentication): one random password
 * per user of src/lib/messaging/permissions.ts, generated on first use under `<DATA_DIR>/secrets/` and kept
 * (`nats-<user>.password`, mode 0600, in a 0700 directory), and the nats-server configuration written from the
 * permissions module beside them (`nats-server.conf`, 0600, rewritten at every start so it follows the code).
 * Passwords are never logged: only file paths are.
 */
import { randomBytes } from "node:crypto";
import { chmod, mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { NatsAuth } from "../lib/messaging/connection.js";
import { inboxPrefixOf, NATS_USERS, renderNatsConfig, type NatsUser } from "../lib/messaging/permissions.js";

/** The credentials a stack or test uses. */
export interface NatsSecrets {
  /** `<dataDir>/secrets`. */
  dir: string;
  /** The generated nats-server configuration (`-c`). */
  configFile: string;
  /** Password file of each user. */
  passwordFiles: Record<NatsUser, string>;
  /** The credential of a user (for a connection made in this process). */
  auth(user: NatsUser): NatsAuth;
  /** The environment of a process running as `user`: NATS_USER and NATS_PASSWORD_FILE (the password stays in the file). */
  env(user: NatsUser): Record<string, string>;
}

/** The directory of the stack's secrets under a data dir (shared with the HTTP side's signing key). */
export function secretsDir(dataDir: string): string {
  return join(dataDir, "secrets");
}

/** Reads the password in `file`, or generates one and writes it there (mode 0600) when the file is absent. */
async function passwordIn(file: string): Promise<string> {
  try {
    const existing = (await readFile(file, "utf8")).trim();
    if (existing) {
      await chmod(file, 0o600);
      return existing;
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
  }
  const pass = randomBytes(24).toString("base64url");
  await writeFile(file, `${pass}\n`, { mode: 0o600, flag: "w" });
  await chmod(file, 0o600);
  return pass;
}

/**
 * The NATS credentials under `<dataDir>/secrets`: passwords created when missing, kept otherwise; the server
 * configuration rewritten from the permissions module.
 */
export async function ensureNatsSecrets(dataDir: string): Promise<NatsSecrets> {
  const dir = secretsDir(dataDir);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  const passwords = {} as Record<NatsUser, string>;
  const passwordFiles = {} as Record<NatsUser, string>;
  for (const user of NATS_USERS) {
    passwordFiles[user] = join(dir, `nats-${user}.password`);
    passwords[user] = await passwordIn(passwordFiles[user]);
  }
  const configFile = join(dir, "nats-server.conf");
  await writeFile(configFile, renderNatsConfig(passwords), { mode: 0o600 });
  await chmod(configFile, 0o600);
  return {
    dir,
    configFile,
    passwordFiles,
    auth: (user) => ({ user, pass: passwords[user], inboxPrefix: inboxPrefixOf(user) }),
    // NATS_PASSWORD emptied: one inherited from a parent environment must not override the file.
    env: (user) => ({ NATS_USER: user, NATS_PASSWORD: "", NATS_PASSWORD_FILE: passwordFiles[user] }),
  };
}
