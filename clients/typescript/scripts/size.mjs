// Prints the min+gzip size of the core entry point (what a browser app bundles).
import { coreSize } from "../test/size.mjs";
const { min, gzip } = await coreSize();
console.log(`@deltarelay/client core: ${min} bytes minified, ${gzip} bytes min+gzip`);
