// Shared set-up of the contract tests: a sandbox chain, keys and the helpers
// that read outcomes from transactions.
'use strict';
const { Blockchain } = require('@ton/sandbox');
const { keyPairFromSeed, sign } = require('@ton/crypto');
const { toNano } = require('@ton/core');
const { PaymentChannel, voucherCell } = require('./contracts');

const T0 = 1_800_000_000;

function keyPair(label) {
    const seed = Buffer.alloc(32);
    seed.write(label);
    return keyPairFromSeed(seed);
}

// `binding`: the channel's network and instance ({ globalId, instance }), as
// its get-method reports them once it is funded.
function signVoucher(secretKey, channel, total, binding) {
    const voucher = voucherCell(channel, binding, total);
    return { voucher, signature: sign(voucher.hash(), secretKey) };
}

// A chain with a payer, a payee and one deployed channel holding `deposit`.
async function channelFixture({ deposit = toNano('10'), disputeWindow = 3600, channelId = 1n, chain: given } = {}) {
    const chain = given ?? (await Blockchain.create());
    chain.now = T0;
    const payer = await chain.treasury('payer');
    const payee = await chain.treasury('payee');
    const stranger = await chain.treasury('stranger');
    const keys = keyPair('payer key');
    const params = { payer: payer.address, payee: payee.address, payerKey: keys.publicKey, channelId, disputeWindow };
    const channel = chain.openContract(PaymentChannel.create(params));
    const deployed = await channel.sendTopUp(payer.getSender(), deposit);
    const { globalId, instance } = await channel.getState();
    return { chain, payer, payee, stranger, keys, params, channel, deployed, binding: { globalId, instance } };
}

// The transaction a message caused on `address`, or a failure naming what was there.
function txOn(result, address) {
    const tx = result.transactions.find(
        (t) => t.inMessage && t.inMessage.info.dest && t.inMessage.info.dest.equals && t.inMessage.info.dest.equals(address),
    );
    if (!tx) throw new Error(`no transaction on ${address}`);
    return tx;
}

function exitCode(tx) {
    const c = tx.description.computePhase;
    return c.type === 'vm' ? c.exitCode : null;
}

function gasUsed(tx) {
    const c = tx.description.computePhase;
    return c.type === 'vm' ? Number(c.gasUsed) : 0;
}

// Every fee the operation cost: each transaction's total, plus the part of
// each internal message's forwarding fee that no transaction's total holds.
function totalFees(result) {
    let sum = 0n;
    for (const t of result.transactions) {
        sum += t.totalFees.coins;
        for (const m of t.outMessages.values()) if (m.info.type === 'internal') sum += m.info.forwardFee;
    }
    return sum;
}

// Value sent by the contract to `dest` in this result.
function paidTo(result, from, dest) {
    let sum = 0n;
    for (const t of result.transactions) {
        const m = t.inMessage;
        if (m && m.info.type === 'internal' && m.info.src.equals(from) && m.info.dest.equals(dest)) sum += m.info.value.coins;
    }
    return sum;
}

module.exports = { T0, keyPair, signVoucher, channelFixture, txOn, exitCode, gasUsed, totalFees, paidTo };
