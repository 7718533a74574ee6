/** What the console API answers: the server's own types (one definition for both). */
export type { ConsumerRow, OverviewSample, Session } from "../../src/services/console/api-types.js";
