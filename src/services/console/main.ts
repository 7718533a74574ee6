import { runService } from "../../lib/service.js";
import { definition } from "./service.js";

runService(definition);
