'use strict';
const { it } = require('node:test');
const assert = require('node:assert/strict');
const { measureGas, formatGasTable } = require('../lib/gas');

it('every action stays within its gas budget (table printed)', async () => {
    const rows = await measureGas();
    console.log(formatGasTable(rows));
    for (const r of rows) {
        // Far above what any action uses today, far below what would make a
        // claim uneconomic (a claim pays 0.05 TON for 50,000 gas at most).
        assert.ok(r.gas > 0 && r.gas < 50_000, `${r.action}: ${r.gas} gas`);
    }
});
