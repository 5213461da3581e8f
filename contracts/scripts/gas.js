// Prints the gas table (make bench).
'use strict';
const { measureGas, formatGasTable } = require('../lib/gas');

measureGas()
    .then((rows) => {
        console.log(formatGasTable(rows));
        // How much one settlement covers at the proxy's default threshold.
        const claim = rows.find((r) => r.action === 'channel: claim');
        const threshold = 1_000_000_000n; // [ton] settle_threshold default: 1 TON
        const perK = { prompt: 20_000n, completion: 60_000n }; // the demo's prices, nanoTON per 1,000 tokens
        console.log('');
        console.log('| request (prompt + completion tokens, demo prices, 10 % commission) | charge, nanoTON | requests per 1 TON settlement | claim fee share |');
        console.log('|---|---:|---:|---:|');
        for (const [p, c] of [[200n, 200n], [1000n, 500n], [4000n, 1000n]]) {
            const cost = (p * perK.prompt + c * perK.completion + 999n) / 1000n;
            const charge = cost + cost / 10n;
            const share = (Number(BigInt(claim.feesNano)) / Number(threshold)) * 100;
            console.log(`| ${p} + ${c} | ${charge} | ${threshold / charge} | ${share.toFixed(2)} % |`);
        }
    })
    .catch((e) => {
        console.error(e);
        process.exit(1);
    });
