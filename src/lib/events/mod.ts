export * from "./catalog.js";
export * from "./envelope.js";
export * from "./codec.js";
export * from "./versions.js";
