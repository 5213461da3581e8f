// Cell layouts and wrappers of the two contracts, for the tests and the local
// chain. The Rust side (crate `cocoon-ton`) builds the same cells; the
// cross-stack tests hold both to the same hashes.
'use strict';
const fs = require('fs');
const path = require('path');
const { Address, Cell, Dictionary, beginCell, contractAddress, SendMode } = require('@ton/core');

const OP = {
    voucher: 0x636f7632,
    topUp: 0x746f7075,
    claim: 0x636c6169,
    requestClose: 0x636c6f73,
    finalize: 0x66696e61,
    payout: 0x70617964,
    addImage: 0x72696d61,
    removeImage: 0x72696d64,
    addModel: 0x726d6f61,
    removeModel: 0x726d6f64,
    addProxy: 0x72707261,
    removeProxy: 0x72707264,
    changeOwner: 0x726f776e,
    excess: 0x72657863,
};

const ERR = {
    notPayer: 401,
    notPayee: 402,
    wrongChannel: 403,
    badSignature: 404,
    staleVoucher: 405,
    aboveDeposit: 406,
    closing: 407,
    notClosing: 408,
    tooEarly: 409,
    closed: 410,
    topUpTooSmall: 411,
    wrongNetwork: 412,
    wrongInstance: 413,
    notOwner: 501,
    unknownOp: 0xffff,
};

const TOPUP_FEE = 10_000_000n;

function loadCode(name) {
    const file = path.join(__dirname, '..', 'compiled', `${name}.json`);
    const artifact = JSON.parse(fs.readFileSync(file, 'utf-8'));
    return Cell.fromBase64(artifact.codeBoc64);
}

// ChannelConfig and Storage of payment_channel.tolk.
function channelData({ payer, payee, payerKey, channelId, disputeWindow }) {
    const config = beginCell()
        .storeAddress(payer)
        .storeAddress(payee)
        .storeBuffer(payerKey, 32)
        .storeUint(channelId, 64)
        .storeUint(disputeWindow, 32)
        .endCell();
    return beginCell().storeRef(config).storeCoins(0).storeCoins(0).storeUint(0, 32).storeBit(false).storeUint(0, 64).endCell();
}

// A voucher binds the channel's address, the network (global id) and the
// channel's instance (the logical time of its first top-up).
function voucherCell(channel, { globalId, instance }, total) {
    return beginCell()
        .storeUint(OP.voucher, 32)
        .storeAddress(channel)
        .storeInt(globalId, 32)
        .storeUint(instance, 64)
        .storeCoins(total)
        .endCell();
}

function claimBody(queryId, signature, voucher) {
    return beginCell().storeUint(OP.claim, 32).storeUint(queryId, 64).storeBuffer(signature, 64).storeRef(voucher).endCell();
}

function opBody(op, queryId = 0n) {
    return beginCell().storeUint(op, 32).storeUint(queryId, 64).endCell();
}

class PaymentChannel {
    constructor(address, init) {
        this.address = address;
        this.init = init;
    }

    static create(params, code = loadCode('payment_channel')) {
        const data = channelData(params);
        const init = { code, data };
        return new PaymentChannel(contractAddress(0, init), init);
    }

    async sendTopUp(provider, via, value, queryId = 0n) {
        await provider.internal(via, { value, sendMode: SendMode.PAY_GAS_SEPARATELY, body: opBody(OP.topUp, queryId) });
    }

    async sendClaim(provider, via, value, { signature, voucher, queryId = 0n }) {
        await provider.internal(via, {
            value,
            sendMode: SendMode.PAY_GAS_SEPARATELY,
            body: claimBody(queryId, signature, voucher),
        });
    }

    async sendBody(provider, via, value, body) {
        await provider.internal(via, { value, sendMode: SendMode.PAY_GAS_SEPARATELY, body });
    }

    async sendRequestClose(provider, via, value, queryId = 0n) {
        await provider.internal(via, { value, sendMode: SendMode.PAY_GAS_SEPARATELY, body: opBody(OP.requestClose, queryId) });
    }

    async sendFinalize(provider, via, value, queryId = 0n) {
        await provider.internal(via, { value, sendMode: SendMode.PAY_GAS_SEPARATELY, body: opBody(OP.finalize, queryId) });
    }

    async getState(provider) {
        const { stack } = await provider.get('get_channel_state', []);
        return {
            payer: stack.readAddress(),
            payee: stack.readAddress(),
            payerKey: stack.readBigNumber(),
            channelId: stack.readBigNumber(),
            disputeWindow: stack.readNumber(),
            deposited: stack.readBigNumber(),
            claimed: stack.readBigNumber(),
            closingSince: stack.readNumber(),
            closed: stack.readBoolean(),
            balance: stack.readBigNumber(),
            instance: stack.readBigNumber(),
            globalId: stack.readNumber(),
        };
    }
}

// Storage of registry.tolk.
function registryData(owner) {
    return beginCell().storeAddress(owner).storeMaybeRef(null).storeMaybeRef(null).storeMaybeRef(null).endCell();
}

// Bytes in a snake cell: the first 127 in the root, the rest in its first ref.
function snakeCell(bytes) {
    const buf = Buffer.from(bytes);
    const chunks = [];
    for (let i = 0; i < buf.length; i += 127) chunks.push(buf.subarray(i, i + 127));
    if (chunks.length === 0) chunks.push(Buffer.alloc(0));
    let tail = null;
    for (const chunk of chunks.reverse()) {
        const b = beginCell().storeBuffer(chunk);
        if (tail) b.storeRef(tail);
        tail = b.endCell();
    }
    return tail;
}

function readSnake(cell) {
    const parts = [];
    let c = cell;
    while (c) {
        const s = c.beginParse();
        parts.push(s.loadBuffer(s.remainingBits / 8));
        c = s.remainingRefs > 0 ? s.loadRef() : null;
    }
    return Buffer.concat(parts);
}

function proxyEntryCell({ wallet, commissionPpm, endpoint }) {
    return beginCell().storeAddress(wallet).storeUint(commissionPpm, 32).storeRef(snakeCell(endpoint)).endCell();
}

class Registry {
    constructor(address, init) {
        this.address = address;
        this.init = init;
    }

    static create(owner, code = loadCode('registry')) {
        const init = { code, data: registryData(owner) };
        return new Registry(contractAddress(0, init), init);
    }

    async sendBody(provider, via, value, body) {
        await provider.internal(via, { value, sendMode: SendMode.PAY_GAS_SEPARATELY, body });
    }

    async getOwner(provider) {
        return (await provider.get('get_owner', [])).stack.readAddress();
    }

    async getImage(provider, digest) {
        const { stack } = await provider.get('get_image', [{ type: 'int', value: BigInt('0x' + digest.toString('hex')) }]);
        const cell = stack.readCellOpt();
        return cell ? readSnake(cell) : null;
    }

    async getImages(provider) {
        const { stack } = await provider.get('get_images', []);
        const root = stack.readCellOpt();
        if (!root) return new Map();
        const dict = Dictionary.loadDirect(Dictionary.Keys.BigUint(256), Dictionary.Values.Cell(), root);
        return new Map(dict.keys().map((k) => [k, readSnake(dict.get(k))]));
    }

    async isModelAllowed(provider, digest) {
        const { stack } = await provider.get('is_model_allowed', [{ type: 'int', value: BigInt('0x' + digest.toString('hex')) }]);
        return stack.readBoolean();
    }

    async getProxy(provider, key) {
        const { stack } = await provider.get('get_proxy', [{ type: 'int', value: BigInt('0x' + key.toString('hex')) }]);
        const cell = stack.readCellOpt();
        if (!cell) return null;
        const s = cell.beginParse();
        return { wallet: s.loadAddress(), commissionPpm: s.loadUint(32), endpoint: readSnake(s.loadRef()).toString('utf-8') };
    }
}

const registryBody = {
    addImage: (digest, document, queryId = 0n) =>
        beginCell().storeUint(OP.addImage, 32).storeUint(queryId, 64).storeBuffer(digest, 32).storeRef(snakeCell(document)).endCell(),
    removeImage: (digest, queryId = 0n) =>
        beginCell().storeUint(OP.removeImage, 32).storeUint(queryId, 64).storeBuffer(digest, 32).endCell(),
    addModel: (digest, queryId = 0n) =>
        beginCell().storeUint(OP.addModel, 32).storeUint(queryId, 64).storeBuffer(digest, 32).endCell(),
    removeModel: (digest, queryId = 0n) =>
        beginCell().storeUint(OP.removeModel, 32).storeUint(queryId, 64).storeBuffer(digest, 32).endCell(),
    addProxy: (key, entry, queryId = 0n) =>
        beginCell().storeUint(OP.addProxy, 32).storeUint(queryId, 64).storeBuffer(key, 32).storeRef(proxyEntryCell(entry)).endCell(),
    removeProxy: (key, queryId = 0n) =>
        beginCell().storeUint(OP.removeProxy, 32).storeUint(queryId, 64).storeBuffer(key, 32).endCell(),
    changeOwner: (owner, queryId = 0n) =>
        beginCell().storeUint(OP.changeOwner, 32).storeUint(queryId, 64).storeAddress(owner).endCell(),
};

module.exports = {
    OP,
    ERR,
    TOPUP_FEE,
    loadCode,
    channelData,
    voucherCell,
    claimBody,
    opBody,
    PaymentChannel,
    Registry,
    registryBody,
    registryData,
    snakeCell,
    readSnake,
    proxyEntryCell,
    Address,
};
