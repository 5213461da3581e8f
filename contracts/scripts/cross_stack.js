// Cross-stack check, driven by the Rust test `ton/tests/cross_stack.rs`:
// reads the cells Rust built (JSON file named on the command line), rebuilds
// each with @ton/core and compares hashes, then has the contracts on
// @ton/sandbox run the Rust-built state inits and messages. Prints one JSON
// object: what @ton/core built (so Rust can compare the other way), the
// outcome of each message and the get-method stacks, in the toncenter v2
// format the Rust chain client reads.
//
// A voucher names its channel's instance, the logical time of the first
// top-up, known only once the channel is deployed: with `--probe`, the script
// deploys the Rust state init on a fresh emulated chain and prints only the
// channel's { instance, globalId }. The full run deploys the same way first
// (the emulator is deterministic) and checks the instance it got is that one.
'use strict';
const fs = require('fs');
const crypto = require('node:crypto');
const { Blockchain, internal } = require('@ton/sandbox');
const { Address, Cell, beginCell, loadStateInit, toNano } = require('@ton/core');
const c = require('../lib/contracts');

const boc = (b64) => Cell.fromBase64(b64);
const hex = (cell) => cell.hash().toString('hex');

const { stackToToncenter } = require('../lib/toncenter');

// A fresh emulated chain with the Rust-built channel deployed by its first top-up.
async function deployed(input, params, channel, run) {
    const chain = await Blockchain.create();
    const channelInit = loadStateInit(boc(input.channel.stateInit).beginParse());
    await run(chain, 'deploy + top-up', params.payer, channel.address, toNano('10'), input.channel.topUp, channelInit);
    const { stack } = await chain.runGetMethod(channel.address, 'get_channel_state', []);
    const entries = stack.map((e) => (e.type === 'int' ? e.value : null));
    return { chain, binding: { instance: entries[10].toString(), globalId: Number(entries[11]) } };
}

async function main() {
    const input = JSON.parse(fs.readFileSync(process.argv[2], 'utf-8'));
    const probe = process.argv.includes('--probe');
    const p = input.channel.params;
    const params = {
        payer: Address.parse(p.payer),
        payee: Address.parse(p.payee),
        payerKey: Buffer.from(p.payerKey, 'hex'),
        channelId: BigInt(p.channelId),
        disputeWindow: p.disputeWindow,
    };
    const channel = c.PaymentChannel.create(params);
    const outcomes = [];
    const run = async (chain, what, from, to, value, body, init) => {
        const r = await chain.sendMessage(internal({ from, to, value, body: boc(body), stateInit: init }));
        const tx = r.transactions.find((t) => t.inMessage.info.dest.equals(to));
        const phase = tx.description.computePhase;
        outcomes.push({ what, exitCode: phase.type === 'vm' ? phase.exitCode : null });
    };
    if (probe) {
        const { binding } = await deployed(input, params, channel, run);
        console.log(JSON.stringify(binding));
        return;
    }
    const mismatches = [];
    const binding = { globalId: input.channel.binding.globalId, instance: BigInt(input.channel.binding.instance) };
    const same = (what, rustB64, jsCell) => {
        if (hex(boc(rustB64)) !== hex(jsCell)) mismatches.push(`${what}: Rust ${hex(boc(rustB64))}, @ton/core ${hex(jsCell)}`);
    };

    // 1. The same cells from both stacks.
    same('channel data', input.channel.data, channel.init.data);
    if (input.channel.address !== channel.address.toRawString()) {
        mismatches.push(`channel address: Rust ${input.channel.address}, @ton/core ${channel.address.toRawString()}`);
    }
    const js = { vouchers: [], registry: {} };
    for (const v of input.channel.vouchers) {
        const cell = c.voucherCell(channel.address, binding, BigInt(v.total));
        same(`voucher ${v.total}`, v.voucher, cell);
        same(`claim ${v.total}`, v.claim, c.claimBody(BigInt(v.queryId), Buffer.from(v.signature, 'hex'), cell));
        js.vouchers.push({ total: v.total, voucher: cell.toBoc().toString('base64') });
    }
    same('top-up', input.channel.topUp, c.opBody(c.OP.topUp, 0n));
    same('request close', input.channel.requestClose, c.opBody(c.OP.requestClose, 0n));
    same('finalize', input.channel.finalize, c.opBody(c.OP.finalize, 0n));

    const owner = Address.parse(input.registry.owner);
    const registry = c.Registry.create(owner);
    same('registry data', input.registry.data, registry.init.data);
    const doc = Buffer.from(input.registry.document, 'base64');
    const digest = crypto.createHash('sha256').update(doc).digest();
    const proxyKey = Buffer.from(input.registry.proxyKey, 'hex');
    const proxyEntry = { wallet: Address.parse(input.registry.proxy.wallet), commissionPpm: input.registry.proxy.commissionPpm, endpoint: input.registry.proxy.endpoint };
    const modelDigest = Buffer.from(input.registry.model, 'hex');
    const jsRegistry = {
        addImage: c.registryBody.addImage(digest, doc, 1n),
        addModel: c.registryBody.addModel(modelDigest, 2n),
        addProxy: c.registryBody.addProxy(proxyKey, proxyEntry, 3n),
    };
    for (const [name, cell] of Object.entries(jsRegistry)) {
        same(`registry ${name}`, input.registry.bodies[name], cell);
        js.registry[name] = cell.toBoc().toString('base64');
    }

    // 2. The contracts run what Rust built.
    const { chain, binding: got } = await deployed(input, params, channel, run);
    if (got.instance !== input.channel.binding.instance || got.globalId !== input.channel.binding.globalId) {
        mismatches.push(`channel binding: probed ${JSON.stringify(input.channel.binding)}, deployed ${JSON.stringify(got)}`);
    }
    const send = (...args) => run(chain, ...args);
    for (const v of input.channel.vouchers) await send(`claim ${v.total}`, params.payee, channel.address, toNano('0.05'), v.claim);
    await send('replayed claim', params.payee, channel.address, toNano('0.05'), input.channel.vouchers[0].claim);
    await send('claim signed by another key', params.payee, channel.address, toNano('0.05'), input.channel.forgedClaim);
    await send('claim for another network', params.payee, channel.address, toNano('0.05'), input.channel.otherNetworkClaim);
    await send('claim for an earlier instance', params.payee, channel.address, toNano('0.05'), input.channel.otherInstanceClaim);
    const state = await chain.runGetMethod(channel.address, 'get_channel_state', []);

    const registryInit = loadStateInit(boc(input.registry.stateInit).beginParse());
    await send('registry deploy + add image', owner, registry.address, toNano('1'), input.registry.bodies.addImage, registryInit);
    await send('registry add model', owner, registry.address, toNano('0.05'), input.registry.bodies.addModel);
    await send('registry add proxy', owner, registry.address, toNano('0.05'), input.registry.bodies.addProxy);
    const getters = {};
    for (const m of ['get_images', 'get_models', 'get_proxies', 'get_owner']) {
        getters[m] = stackToToncenter((await chain.runGetMethod(registry.address, m, [])).stack);
    }

    console.log(
        JSON.stringify({
            mismatches,
            channelAddress: channel.address.toRawString(),
            registryAddress: registry.address.toRawString(),
            js,
            outcomes,
            channelState: stackToToncenter(state.stack),
            registry: getters,
        }),
    );
}

main().catch((e) => {
    console.error(e);
    process.exit(1);
});
