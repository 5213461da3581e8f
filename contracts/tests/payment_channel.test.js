'use strict';
const { describe, it } = require('node:test');
const assert = require('node:assert/strict');
const { toNano, beginCell } = require('@ton/core');
const { internal } = require('@ton/sandbox');
const { ERR, OP, TOPUP_FEE, PaymentChannel, voucherCell, claimBody } = require('../lib/contracts');
const { T0, keyPair, signVoucher, channelFixture, txOn, exitCode, paidTo } = require('../lib/testkit');

const GAS = toNano('0.05');

async function claim(f, total, { from = f.payee, keys = f.keys, channel = f.channel.address, binding = f.binding } = {}) {
    const v = signVoucher(keys.secretKey, channel, total, binding);
    return f.channel.sendClaim(from.getSender(), GAS, v);
}

function refusedWith(result, address, code) {
    const tx = txOn(result, address);
    assert.equal(exitCode(tx), code, `exit code ${exitCode(tx)}, expected ${code}`);
    assert.equal(tx.description.aborted, true);
}

// What every refusal must leave intact: the money owed is still covered.
async function assertSolvent(f) {
    const s = await f.channel.getState();
    assert.ok(s.balance >= s.deposited - s.claimed, `balance ${s.balance} < deposited ${s.deposited} - claimed ${s.claimed}`);
    return s;
}

describe('payment channel', () => {
    it('is deployed by its first top-up and credits the value minus the top-up fee', async () => {
        const f = await channelFixture({ deposit: toNano('10') });
        assert.equal(exitCode(txOn(f.deployed, f.channel.address)), 0);
        const s = await f.channel.getState();
        assert.equal(s.deposited, toNano('10') - TOPUP_FEE);
        assert.equal(s.claimed, 0n);
        assert.ok(s.payer.equals(f.payer.address) && s.payee.equals(f.payee.address));
        assert.equal(s.payerKey, BigInt('0x' + f.keys.publicKey.toString('hex')));
        assert.equal(s.channelId, 1n);
        assert.equal(s.disputeWindow, 3600);
        assert.equal(s.closingSince, 0);
        assert.equal(s.closed, false);
        // The sandbox runs mainnet's configuration: global id -239.
        assert.equal(s.globalId, -239);
        assert.ok(s.instance > 0n, 'the first top-up fixes the instance');

        await f.channel.sendTopUp(f.stranger.getSender(), toNano('2'));
        assert.equal((await f.channel.getState()).deposited, toNano('12') - 2n * TOPUP_FEE);
        assert.equal((await f.channel.getState()).instance, s.instance, 'later top-ups keep it');
        await assertSolvent(f);
    });

    it('refuses a top-up that does not cover its fee', async () => {
        const f = await channelFixture();
        const r = await f.channel.sendTopUp(f.payer.getSender(), TOPUP_FEE);
        refusedWith(r, f.channel.address, ERR.topUpTooSmall);
    });

    it('pays each cumulative voucher the difference to the last claim', async () => {
        const f = await channelFixture({ deposit: toNano('10') });
        const before = await f.channel.getState();
        const r1 = await claim(f, toNano('1'));
        assert.equal(exitCode(txOn(r1, f.channel.address)), 0);
        const paid1 = paidTo(r1, f.channel.address, f.payee.address);
        // The payout carries the voucher's amount and what is left of the claim's value.
        assert.ok(paid1 > toNano('1') && paid1 < toNano('1') + GAS, `paid ${paid1}`);
        let s = await f.channel.getState();
        assert.equal(s.claimed, toNano('1'));
        // The contract gave away exactly the voucher's amount of its own money.
        assert.equal(s.balance, before.balance - toNano('1'));

        const r2 = await claim(f, toNano('2.5'));
        assert.equal(exitCode(txOn(r2, f.channel.address)), 0);
        s = await f.channel.getState();
        assert.equal(s.claimed, toNano('2.5'));
        assert.equal(s.balance, before.balance - toNano('2.5'));
    });

    it('refuses a replayed or lower voucher', async () => {
        const f = await channelFixture();
        const v = signVoucher(f.keys.secretKey, f.channel.address, toNano('3'), f.binding);
        await f.channel.sendClaim(f.payee.getSender(), GAS, v);
        refusedWith(await f.channel.sendClaim(f.payee.getSender(), GAS, v), f.channel.address, ERR.staleVoucher);
        refusedWith(await claim(f, toNano('2')), f.channel.address, ERR.staleVoucher);
        refusedWith(await claim(f, 0n), f.channel.address, ERR.staleVoucher);
        assert.equal((await assertSolvent(f)).claimed, toNano('3'));
    });

    it('refuses a voucher signed by another key', async () => {
        const f = await channelFixture();
        refusedWith(await claim(f, toNano('1'), { keys: keyPair('not the payer') }), f.channel.address, ERR.badSignature);
        // A valid signature over another total is no signature for this one.
        const good = signVoucher(f.keys.secretKey, f.channel.address, toNano('1'), f.binding);
        const forged = { voucher: voucherCell(f.channel.address, f.binding, toNano('5')), signature: good.signature };
        refusedWith(await f.channel.sendClaim(f.payee.getSender(), GAS, forged), f.channel.address, ERR.badSignature);
        assert.equal((await assertSolvent(f)).claimed, 0n);
    });

    it('refuses a voucher for another channel of the same payer', async () => {
        const f = await channelFixture();
        const other = PaymentChannel.create({ ...f.params, channelId: 2n });
        refusedWith(await claim(f, toNano('1'), { channel: other.address }), f.channel.address, ERR.wrongChannel);
    });

    it('refuses a voucher signed for another network', async () => {
        const f = await channelFixture();
        // Testnet's global id: the same addresses exist there, so a voucher must say where it pays.
        refusedWith(await claim(f, toNano('1'), { binding: { ...f.binding, globalId: -3 } }), f.channel.address, ERR.wrongNetwork);
        assert.equal((await assertSolvent(f)).claimed, 0n);
        // The same voucher on a chain whose global id is -3 is refused there too, and one made for it pays.
        const { Blockchain } = require('@ton/sandbox');
        const { loadConfig, updateConfig } = require('@ton/sandbox');
        const testnet = await channelFixture({ chain: await Blockchain.create() });
        testnet.chain.setConfig(updateConfig(testnet.chain.config, { kind: 'ConfigParam__19', global_id: -3 }));
        assert.equal(loadConfig(testnet.chain.config)[19].global_id, -3);
        const mainnetVoucher = signVoucher(testnet.keys.secretKey, testnet.channel.address, toNano('1'), testnet.binding);
        refusedWith(await testnet.channel.sendClaim(testnet.payee.getSender(), GAS, mainnetVoucher), testnet.channel.address, ERR.wrongNetwork);
        assert.equal((await testnet.channel.getState()).globalId, -3);
        const r = await claim(testnet, toNano('1'), { binding: { ...testnet.binding, globalId: -3 } });
        assert.equal(exitCode(txOn(r, testnet.channel.address)), 0);
    });

    it('refuses a voucher of an earlier instance of a channel deployed again at the same address', async () => {
        const f = await channelFixture({ deposit: toNano('2') });
        const old = signVoucher(f.keys.secretKey, f.channel.address, toNano('1'), f.binding);
        assert.equal(exitCode(txOn(await f.channel.sendClaim(f.payee.getSender(), GAS, old), f.channel.address)), 0);
        // The account is deleted (here: its state removed, as storage fees do to an empty account)
        // and the same state init deployed again: claimed starts from 0.
        f.chain.now = T0 + 100;
        await f.chain.setShardAccount(f.channel.address, require('@ton/sandbox').createShardAccount({
            address: f.channel.address, code: f.channel.init.code, data: f.channel.init.data, balance: 0n, workchain: 0,
        }));
        await f.channel.sendTopUp(f.payer.getSender(), toNano('2'));
        const again = await f.channel.getState();
        assert.equal(again.claimed, 0n);
        assert.notEqual(again.instance, f.binding.instance, 'a new instance');
        refusedWith(await f.channel.sendClaim(f.payee.getSender(), GAS, old), f.channel.address, ERR.wrongInstance);
        assert.equal((await assertSolvent(f)).claimed, 0n);
        const fresh = await claim(f, toNano('1'), { binding: { globalId: again.globalId, instance: again.instance } });
        assert.equal(exitCode(txOn(fresh, f.channel.address)), 0);
    });

    it('refuses a claim above the deposit, and pays it once the deposit grows', async () => {
        const f = await channelFixture({ deposit: toNano('1') });
        const deposited = (await f.channel.getState()).deposited;
        refusedWith(await claim(f, deposited + 1n), f.channel.address, ERR.aboveDeposit);
        assert.equal(exitCode(txOn(await claim(f, deposited), f.channel.address)), 0);
        await f.channel.sendTopUp(f.payer.getSender(), toNano('1'));
        assert.equal(exitCode(txOn(await claim(f, deposited + 1n), f.channel.address)), 0);
        await assertSolvent(f);
    });

    it('takes claims only from the payee', async () => {
        const f = await channelFixture();
        refusedWith(await claim(f, toNano('1'), { from: f.stranger }), f.channel.address, ERR.notPayee);
        refusedWith(await claim(f, toNano('1'), { from: f.payer }), f.channel.address, ERR.notPayee);
    });

    it('closes: payer asks, payee claims within the window, payer finalizes after it', async () => {
        const f = await channelFixture({ deposit: toNano('10'), disputeWindow: 3600 });
        refusedWith(await f.channel.sendRequestClose(f.payee.getSender(), GAS), f.channel.address, ERR.notPayer);
        refusedWith(await f.channel.sendFinalize(f.payer.getSender(), GAS), f.channel.address, ERR.notClosing);

        const closeAt = T0 + 100;
        f.chain.now = closeAt;
        const rc = await f.channel.sendRequestClose(f.payer.getSender(), GAS);
        assert.equal(exitCode(txOn(rc, f.channel.address)), 0);
        assert.equal((await f.channel.getState()).closingSince, closeAt);
        refusedWith(await f.channel.sendRequestClose(f.payer.getSender(), GAS), f.channel.address, ERR.closing);
        refusedWith(await f.channel.sendTopUp(f.payer.getSender(), toNano('1')), f.channel.address, ERR.closing);

        f.chain.now = closeAt + 3599;
        refusedWith(await f.channel.sendFinalize(f.payer.getSender(), GAS), f.channel.address, ERR.tooEarly);
        assert.equal(exitCode(txOn(await claim(f, toNano('4')), f.channel.address)), 0);

        f.chain.now = closeAt + 3600;
        refusedWith(await f.channel.sendFinalize(f.payee.getSender(), GAS), f.channel.address, ERR.notPayer);
        const before = await f.channel.getState();
        const fin = await f.channel.sendFinalize(f.payer.getSender(), GAS);
        assert.equal(exitCode(txOn(fin, f.channel.address)), 0);
        const refund = paidTo(fin, f.channel.address, f.payer.address);
        assert.ok(refund >= before.balance && refund <= before.balance + GAS, `refund ${refund}, balance ${before.balance}`);
        const after = await f.channel.getState();
        assert.equal(after.closed, true);
        assert.equal(after.balance, 0n);

        refusedWith(await claim(f, toNano('5')), f.channel.address, ERR.closed);
        refusedWith(await f.channel.sendFinalize(f.payer.getSender(), GAS), f.channel.address, ERR.closed);
        refusedWith(await f.channel.sendRequestClose(f.payer.getSender(), GAS), f.channel.address, ERR.closed);
    });

    it('refuses plain transfers and unknown operations, returning their value', async () => {
        const f = await channelFixture();
        const before = await f.channel.getState();
        for (const body of [beginCell().endCell(), beginCell().storeUint(0xdeadbeef, 32).storeUint(0, 64).endCell()]) {
            const r = await f.channel.sendBody(f.stranger.getSender(), toNano('1'), body);
            refusedWith(r, f.channel.address, ERR.unknownOp);
            const back = paidTo(r, f.channel.address, f.stranger.address);
            assert.ok(back > toNano('0.99'), `bounced back ${back}`);
        }
        // A truncated claim is not a claim.
        const truncated = beginCell().storeUint(OP.claim, 32).storeUint(0, 64).endCell();
        const r = await f.channel.sendBody(f.payee.getSender(), GAS, truncated);
        assert.notEqual(exitCode(txOn(r, f.channel.address)), 0);
        const after = await assertSolvent(f);
        assert.equal(after.deposited, before.deposited);
        assert.equal(after.claimed, 0n);
    });

    it('sends only non-bounceable payouts and ignores a bounce sent to it', async () => {
        const f = await channelFixture();
        const r = await claim(f, toNano('1'));
        const out = txOn(r, f.channel.address).outMessages.values();
        assert.equal(out.length, 1);
        assert.equal(out[0].info.bounce, false);
        assert.equal(out[0].body.beginParse().loadUint(32), OP.payout);

        const before = await f.channel.getState();
        const bounced = await f.chain.sendMessage(
            internal({
                from: f.payer.address,
                to: f.channel.address,
                value: toNano('0.1'),
                bounced: true,
                bounce: false,
                body: beginCell().storeUint(0xffffffff, 32).storeUint(OP.payout, 32).endCell(),
            }),
        );
        const tx = txOn(bounced, f.channel.address);
        assert.equal(exitCode(tx), 0);
        assert.equal(tx.outMessagesCount, 0);
        const after = await f.channel.getState();
        assert.equal(after.claimed, before.claimed);
        assert.equal(after.deposited, before.deposited);
    });

    it('cannot be drained by claims carrying too little value for their gas', async () => {
        const f = await channelFixture();
        const before = await f.channel.getState();
        const v = signVoucher(f.keys.secretKey, f.channel.address, toNano('1'), f.binding);
        const r = await f.channel.sendBody(f.payee.getSender(), 1000n, claimBody(0n, v.signature, v.voucher));
        assert.notEqual(exitCode(txOn(r, f.channel.address)), 0);
        const after = await assertSolvent(f);
        assert.equal(after.claimed, 0n);
        assert.ok(after.balance >= before.balance, `balance ${after.balance} < ${before.balance}`);
    });
});

