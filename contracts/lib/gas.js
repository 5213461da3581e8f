// Measures what each on-chain action costs on the emulator: the gas the
// contract's transaction used and every fee of the whole operation (the
// sender's wallet, the contract, the payout's receiver), in TON.
'use strict';
const crypto = require('node:crypto');
const { Blockchain } = require('@ton/sandbox');
const { toNano, fromNano } = require('@ton/core');
const { Registry, registryBody } = require('./contracts');
const { channelFixture, signVoucher, txOn, gasUsed, totalFees, T0 } = require('./testkit');

const sha256 = (b) => crypto.createHash('sha256').update(b).digest();

async function measureGas() {
    const rows = [];
    const row = (action, result, address) => {
        rows.push({ action, gas: gasUsed(txOn(result, address)), feesNano: totalFees(result).toString() });
    };

    const f = await channelFixture({ deposit: toNano('10'), disputeWindow: 3600 });
    row('channel: deploy with first top-up', f.deployed, f.channel.address);
    row('channel: top-up', await f.channel.sendTopUp(f.payer.getSender(), toNano('1')), f.channel.address);
    let v = signVoucher(f.keys.secretKey, f.channel.address, toNano('1'), f.binding);
    row('channel: claim (first)', await f.channel.sendClaim(f.payee.getSender(), toNano('0.05'), v), f.channel.address);
    v = signVoucher(f.keys.secretKey, f.channel.address, toNano('2'), f.binding);
    row('channel: claim', await f.channel.sendClaim(f.payee.getSender(), toNano('0.05'), v), f.channel.address);
    f.chain.now = T0 + 10;
    row('channel: request close', await f.channel.sendRequestClose(f.payer.getSender(), toNano('0.05')), f.channel.address);
    f.chain.now = T0 + 10 + 3600;
    row('channel: finalize', await f.channel.sendFinalize(f.payer.getSender(), toNano('0.05')), f.channel.address);

    const chain = await Blockchain.create();
    const owner = await chain.treasury('owner');
    const registry = chain.openContract(Registry.create(owner.address));
    const doc = Buffer.from(JSON.stringify({ measurement: 'ab'.repeat(48), note: 'x'.repeat(900) }));
    row('registry: deploy with first model', await registry.sendBody(owner.getSender(), toNano('1'), registryBody.addModel(sha256('m0'))), registry.address);
    row('registry: add model', await registry.sendBody(owner.getSender(), toNano('0.05'), registryBody.addModel(sha256('m1'))), registry.address);
    row('registry: add image (1 KB document)', await registry.sendBody(owner.getSender(), toNano('0.05'), registryBody.addImage(sha256(doc), doc)), registry.address);
    const proxy = { wallet: owner.address, commissionPpm: 100000, endpoint: 'https://proxy.example:8443' };
    row('registry: add proxy', await registry.sendBody(owner.getSender(), toNano('0.05'), registryBody.addProxy(sha256('k'), proxy)), registry.address);
    row('registry: remove model', await registry.sendBody(owner.getSender(), toNano('0.05'), registryBody.removeModel(sha256('m1'))), registry.address);

    const reads = [];
    for (const [method, args] of [
        ['get_images', []],
        ['is_model_allowed', [{ type: 'int', value: BigInt('0x' + sha256('m0').toString('hex')) }]],
        ['get_proxies', []],
    ]) {
        const res = await chain.runGetMethod(registry.address, method, args);
        reads.push({ action: `registry read: ${method} (get-method, free off chain)`, gas: Number(res.gasUsed), feesNano: '0' });
    }
    const state = await f.chain.runGetMethod(f.channel.address, 'get_channel_state', []);
    reads.push({ action: 'channel read: get_channel_state (get-method, free off chain)', gas: Number(state.gasUsed), feesNano: '0' });
    return rows.concat(reads);
}

function formatGasTable(rows) {
    const lines = ['| action | gas | fees, TON |', '|---|---:|---:|'];
    for (const r of rows) lines.push(`| ${r.action} | ${r.gas} | ${fromNano(BigInt(r.feesNano))} |`);
    return lines.join('\n');
}

module.exports = { measureGas, formatGasTable };
