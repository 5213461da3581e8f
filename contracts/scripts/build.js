// Compiles every contract in src/ with the pinned @ton/tolk-js into
// compiled/<name>.json ({ tolkVersion, codeBoc64, codeHashHex }). The files are
// committed: the Rust side embeds the code, so building it needs no Node.
//   node scripts/build.js          write compiled/
//   node scripts/build.js --check  fail when compiled/ differs from the sources
'use strict';
const fs = require('fs');
const path = require('path');
const { runTolkCompiler, getTolkCompilerVersion } = require('@ton/tolk-js');

const ROOT = path.join(__dirname, '..');
const CONTRACTS = ['payment_channel', 'registry'];

async function main() {
    const check = process.argv.includes('--check');
    const out = path.join(ROOT, 'compiled');
    fs.mkdirSync(out, { recursive: true });
    let stale = [];
    const version = await getTolkCompilerVersion();
    for (const name of CONTRACTS) {
        const result = await runTolkCompiler({
            entrypointFileName: `${name}.tolk`,
            fsReadCallback: (p) => fs.readFileSync(path.join(ROOT, 'src', p), 'utf-8'),
        });
        if (result.status === 'error') {
            console.error(`${name}.tolk: ${result.message}`);
            process.exit(1);
        }
        const artifact = { tolkVersion: version, codeBoc64: result.codeBoc64, codeHashHex: result.codeHashHex };
        const text = JSON.stringify(artifact, null, 2) + '\n';
        const file = path.join(out, `${name}.json`);
        if (check) {
            const committed = fs.existsSync(file) ? fs.readFileSync(file, 'utf-8') : '';
            if (committed !== text) stale.push(name);
        } else {
            fs.writeFileSync(file, text);
            console.log(`${name}: code hash ${result.codeHashHex} (Tolk ${version})`);
        }
    }
    if (stale.length > 0) {
        console.error(`compiled/ is stale for ${stale.join(', ')}: run \`make contracts\` and commit compiled/`);
        process.exit(1);
    }
}

main().catch((e) => {
    console.error(e);
    process.exit(1);
});
