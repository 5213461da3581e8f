'use strict';
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { Blockchain } = require('@ton/sandbox');
const { toNano, beginCell } = require('@ton/core');
const { ERR, OP, Registry, registryBody } = require('../lib/contracts');
const { txOn, exitCode, paidTo } = require('../lib/testkit');

const GAS = toNano('0.05');
const sha256 = (b) => crypto.createHash('sha256').update(b).digest();

async function fixture() {
    const chain = await Blockchain.create();
    const owner = await chain.treasury('owner');
    const stranger = await chain.treasury('stranger');
    const registry = chain.openContract(Registry.create(owner.address));
    const deployed = await registry.sendBody(owner.getSender(), toNano('1'), registryBody.addModel(sha256('bootstrap')));
    assert.equal(exitCode(txOn(deployed, registry.address)), 0);
    return { chain, owner, stranger, registry };
}

describe('registry', () => {
    it('lists the images, models and proxies its owner adds, and forgets removed ones', async () => {
        const { owner, registry } = await fixture();
        // A reference-values document longer than one cell, as `make measure` prints them.
        const doc = Buffer.from(JSON.stringify({ tdx: { mrtd: 'ab'.repeat(48), rtmr: ['cd'.repeat(48), 'ef'.repeat(48)] } }));
        const digest = sha256(doc);
        const r = await registry.sendBody(owner.getSender(), GAS, registryBody.addImage(digest, doc, 7n));
        assert.equal(exitCode(txOn(r, registry.address)), 0);
        // The owner gets its unspent value back with the query id.
        const excess = r.transactions.find((t) => t.inMessage.info.src && t.inMessage.info.src.equals && t.inMessage.info.src.equals(registry.address));
        const body = excess.inMessage.body.beginParse();
        assert.equal(body.loadUint(32), OP.excess);
        assert.equal(body.loadUintBig(64), 7n);
        assert.ok(paidTo(r, registry.address, owner.address) > 0n);

        assert.deepEqual(await registry.getImage(digest), doc);
        const images = await registry.getImages();
        assert.equal(images.size, 1);
        assert.deepEqual(images.get(BigInt('0x' + digest.toString('hex'))), doc);

        const model = sha256('model weights');
        assert.equal(await registry.isModelAllowed(model), false);
        await registry.sendBody(owner.getSender(), GAS, registryBody.addModel(model));
        assert.equal(await registry.isModelAllowed(model), true);

        const key = sha256('proxy key');
        const entry = { wallet: owner.address, commissionPpm: 100000, endpoint: 'https://proxy.example:8443/' + 'x'.repeat(200) };
        await registry.sendBody(owner.getSender(), GAS, registryBody.addProxy(key, entry));
        const got = await registry.getProxy(key);
        assert.ok(got.wallet.equals(entry.wallet));
        assert.equal(got.commissionPpm, entry.commissionPpm);
        assert.equal(got.endpoint, entry.endpoint);

        await registry.sendBody(owner.getSender(), GAS, registryBody.removeImage(digest));
        await registry.sendBody(owner.getSender(), GAS, registryBody.removeModel(model));
        await registry.sendBody(owner.getSender(), GAS, registryBody.removeProxy(key));
        assert.equal(await registry.getImage(digest), null);
        assert.equal((await registry.getImages()).size, 0);
        assert.equal(await registry.isModelAllowed(model), false);
        assert.equal(await registry.getProxy(key), null);
    });

    it('refuses every change from anyone but the owner', async () => {
        const { owner, stranger, registry } = await fixture();
        const d = sha256('x');
        const bodies = [
            registryBody.addImage(d, Buffer.from('{}')),
            registryBody.removeImage(d),
            registryBody.addModel(d),
            registryBody.removeModel(sha256('bootstrap')),
            registryBody.addProxy(d, { wallet: stranger.address, commissionPpm: 0, endpoint: 'http://evil' }),
            registryBody.removeProxy(d),
            registryBody.changeOwner(stranger.address),
        ];
        for (const body of bodies) {
            const r = await registry.sendBody(stranger.getSender(), GAS, body);
            assert.equal(exitCode(txOn(r, registry.address)), ERR.notOwner);
        }
        assert.ok((await registry.getOwner()).equals(owner.address));
        assert.equal(await registry.isModelAllowed(sha256('bootstrap')), true);
        assert.equal(await registry.getImage(d), null);
    });

    it('hands ownership over, after which only the new owner governs', async () => {
        const { owner, stranger, registry } = await fixture();
        await registry.sendBody(owner.getSender(), GAS, registryBody.changeOwner(stranger.address));
        assert.ok((await registry.getOwner()).equals(stranger.address));
        const r = await registry.sendBody(owner.getSender(), GAS, registryBody.addModel(sha256('m')));
        assert.equal(exitCode(txOn(r, registry.address)), ERR.notOwner);
        const ok = await registry.sendBody(stranger.getSender(), GAS, registryBody.addModel(sha256('m')));
        assert.equal(exitCode(txOn(ok, registry.address)), 0);
    });

    it('refuses unknown operations and plain transfers', async () => {
        const { owner, registry } = await fixture();
        for (const body of [beginCell().endCell(), beginCell().storeUint(0x12345678, 32).endCell()]) {
            const r = await registry.sendBody(owner.getSender(), GAS, body);
            assert.equal(exitCode(txOn(r, registry.address)), ERR.unknownOp);
        }
    });
});
