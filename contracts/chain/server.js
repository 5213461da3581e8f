// A local TON chain for tests and the demo: @ton/sandbox (the TVM emulator)
// behind the subset of the toncenter v2 HTTP API the Rust client uses, so the
// same client code talks to this and to a real endpoint.
//
//   node chain/server.js [--port N] [--global-id ID] [--rate-limit RPS]
//       prints {"url": "http://127.0.0.1:N"} once listening; --global-id sets
//       the network's global id (config param 19; the emulator's default is
//       mainnet's, -239; testnet's is -3), so tests can run two networks;
//       --rate-limit answers /api/v2 calls beyond RPS a second with HTTP 429,
//       as toncenter does (1 a second without an API key).
//
// toncenter v2 subset: POST /api/v2/sendBoc {boc}, POST /api/v2/runGetMethod
// {address, method, stack}, GET /api/v2/getAddressInformation?address=,
// GET /api/v2/getWalletInformation?address=. Local-only (no toncenter
// equivalent): POST /local/airdrop {address, amount} funds an address from a
// faucet, POST /local/advance {seconds} moves the chain's clock, POST
// /local/fees sums every fee the chain has charged since start, POST
// /local/delete {address} deletes an account (as storage fees do).
'use strict';
const http = require('node:http');
const { Blockchain, createEmptyShardAccount, updateConfig } = require('@ton/sandbox');
const { Address, Cell, beginCell, toNano, loadMessage } = require('@ton/core');
const { stackToToncenter } = require('../lib/toncenter');

const MAX_BODY = 1 << 20;

function parseArgs() {
    const arg = (name) => {
        const i = process.argv.indexOf(name);
        return i > 0 ? process.argv[i + 1] : undefined;
    };
    const globalId = arg('--global-id');
    const rate = arg('--rate-limit');
    return {
        port: Number(arg('--port') ?? 0),
        globalId: globalId === undefined ? undefined : Number(globalId),
        rateLimit: rate === undefined ? undefined : Number(rate),
    };
}

class ApiError extends Error {
    constructor(code, message) {
        super(message);
        this.code = code;
    }
}

function parseAddress(text) {
    try {
        return Address.parse(String(text));
    } catch (e) {
        throw new ApiError(416, `incorrect address ${JSON.stringify(text)}: ${e.message}`);
    }
}

function stackFromToncenter(stack) {
    if (!Array.isArray(stack)) throw new ApiError(400, 'stack: expected an array');
    return stack.map((e) => {
        if (!Array.isArray(e) || e.length !== 2) throw new ApiError(400, 'stack entry: expected [type, value]');
        const [type, value] = e;
        if (type === 'num') return { type: 'int', value: BigInt(value) };
        if (type === 'cell') return { type: 'cell', cell: Cell.fromBase64(value.bytes) };
        if (type === 'slice') return { type: 'slice', cell: Cell.fromBase64(value.bytes) };
        throw new ApiError(400, `stack entry type ${type}`);
    });
}

async function main() {
    const args = parseArgs();
    const chain = await Blockchain.create();
    if (args.globalId !== undefined) {
        chain.setConfig(updateConfig(chain.config, { kind: 'ConfigParam__19', global_id: args.globalId }));
    }
    let offset = 0;
    const clock = () => Math.floor(Date.now() / 1000) + offset;
    const faucet = await chain.treasury('local faucet', { balance: toNano('1000000000') });
    let fees = 0n;
    // Every fee: what each transaction paid, plus the part of each internal
    // message's forwarding fee that the message carries to the next block
    // (charged by validators, in no transaction's total).
    const account = (result) => {
        for (const tx of result.transactions) {
            fees += tx.totalFees.coins;
            for (const m of tx.outMessages.values()) if (m.info.type === 'internal') fees += m.info.forwardFee;
        }
        return result;
    };

    const routes = {
        'POST /api/v2/sendBoc': async (body) => {
            let cell;
            try {
                cell = Cell.fromBase64(String(body.boc));
            } catch (e) {
                throw new ApiError(400, `boc: not a bag of cells (${e.message})`);
            }
            const msg = loadMessage(cell.beginParse());
            if (msg.info.type !== 'external-in') throw new ApiError(400, 'boc: expected an external message');
            chain.now = clock();
            let result;
            try {
                result = await chain.sendMessage(msg);
            } catch (e) {
                // An external message its contract does not accept is not applied: toncenter answers 500.
                throw new ApiError(500, `cannot apply external message to current state: ${e.message.split('\n')[0]}`);
            }
            account(result);
            return { '@type': 'ok' };
        },
        'POST /api/v2/runGetMethod': async (body) => {
            const address = parseAddress(body.address);
            chain.now = clock();
            const contract = await chain.getContract(address);
            if (contract.accountState?.type !== 'active') throw new ApiError(500, 'account is not active');
            try {
                const res = await chain.runGetMethod(address, String(body.method), stackFromToncenter(body.stack ?? []));
                return { gas_used: Number(res.gasUsed), exit_code: res.exitCode, stack: stackToToncenter(res.stack) };
            } catch (e) {
                if (e.exitCode !== undefined) return { gas_used: 0, exit_code: e.exitCode, stack: [] };
                throw e;
            }
        },
        'GET /api/v2/getAddressInformation': async (_body, query) => {
            const contract = await chain.getContract(parseAddress(query.get('address')));
            const state = contract.accountState;
            const status = !state ? 'uninitialized' : state.type === 'active' ? 'active' : state.type === 'frozen' ? 'frozen' : 'uninitialized';
            const active = state?.type === 'active';
            return {
                '@type': 'raw.fullAccountState',
                balance: contract.balance.toString(),
                state: status,
                code: active && state.state.code ? state.state.code.toBoc().toString('base64') : '',
                data: active && state.state.data ? state.state.data.toBoc().toString('base64') : '',
                last_transaction_id: { lt: contract.lastTransactionLt.toString(), hash: contract.lastTransactionHash.toString(16) },
                sync_utime: clock(),
            };
        },
        'GET /api/v2/getWalletInformation': async (_body, query) => {
            const address = parseAddress(query.get('address'));
            const contract = await chain.getContract(address);
            const active = contract.accountState?.type === 'active';
            let seqno = 0;
            if (active) {
                const res = await chain.runGetMethod(address, 'seqno', []);
                seqno = res.stackReader.readNumber();
            }
            return {
                wallet: active,
                balance: contract.balance.toString(),
                account_state: active ? 'active' : 'uninitialized',
                seqno,
            };
        },
        'POST /local/airdrop': async (body) => {
            const to = parseAddress(body.address);
            const amount = BigInt(body.amount);
            chain.now = clock();
            account(await faucet.send({ to, value: amount, bounce: false }));
            return { balance: (await chain.getContract(to)).balance.toString() };
        },
        'POST /local/advance': async (body) => {
            offset += Number(body.seconds);
            return { now: clock() };
        },
        'POST /local/fees': async () => ({ fees: fees.toString() }),
        // What storage fees do to an account left empty: it is deleted, and the
        // same state init can deploy there again. Its balance counts as fees.
        'POST /local/delete': async (body) => {
            const address = parseAddress(body.address);
            const gone = (await chain.getContract(address)).balance;
            fees += gone;
            await chain.setShardAccount(address, createEmptyShardAccount(address));
            return { deleted: gone.toString() };
        },
    };

    // toncenter's quota: a bucket of `rateLimit` calls refilled every second.
    let tokens = args.rateLimit ?? Infinity;
    let refilled = Date.now();
    const overQuota = (path) => {
        if (args.rateLimit === undefined || !path.startsWith('/api/v2/')) return false;
        const now = Date.now();
        tokens = Math.min(args.rateLimit, tokens + ((now - refilled) / 1000) * args.rateLimit);
        refilled = now;
        if (tokens < 1) return true;
        tokens -= 1;
        return false;
    };

    let queue = Promise.resolve();
    const server = http.createServer((req, res) => {
        const url = new URL(req.url, 'http://local');
        const route = routes[`${req.method} ${url.pathname}`];
        const chunks = [];
        let size = 0;
        req.on('data', (c) => {
            size += c.length;
            if (size <= MAX_BODY) chunks.push(c);
        });
        req.on('end', async () => {
            const reply = (status, obj) => {
                res.writeHead(status, { 'content-type': 'application/json' });
                res.end(JSON.stringify(obj));
            };
            if (!route) return reply(404, { ok: false, error: `no route ${req.method} ${url.pathname}`, code: 404 });
            if (size > MAX_BODY) return reply(413, { ok: false, error: 'body too large', code: 413 });
            if (overQuota(url.pathname)) return reply(429, { ok: false, error: 'Ratelimit exceed', code: 429 });
            try {
                const body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString('utf-8')) : {};
                // One request at a time: the emulator is one chain, applied in order.
                const run = queue.then(() => route(body, url.searchParams));
                queue = run.catch(() => {});
                reply(200, { ok: true, result: await run });
            } catch (e) {
                const code = e instanceof ApiError ? e.code : e instanceof SyntaxError ? 400 : 500;
                reply(code === 416 ? 416 : code, { ok: false, error: e.message, code });
            }
        });
    });
    server.maxConnections = 64;
    server.listen(parseArgs().port, '127.0.0.1', () => {
        console.log(JSON.stringify({ url: `http://127.0.0.1:${server.address().port}` }));
    });
    process.on('SIGTERM', () => process.exit(0));
}

main().catch((e) => {
    console.error(e);
    process.exit(1);
});
