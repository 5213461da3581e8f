//! The Rust chain client against the local emulated chain
//! (`contracts/chain/server.js`: @ton/sandbox behind the toncenter v2 API):
//! wallets deploy, a payer opens and funds a channel, the payee claims a
//! voucher, the payer closes and takes the rest back, and every nanoTON is
//! accounted for. Needs Node and `contracts/node_modules` (`make contracts-deps`).

mod support;

use cocoon_ton::actions::{self, GAS_VALUE};
use cocoon_ton::channel::ChannelParams;
use cocoon_ton::toncenter::{ChainError, Toncenter};
use cocoon_ton::wallet::Wallet;
use cocoon_ton::{TonError, Voucher};
use ed25519_dalek::SigningKey;
use serde_json::json;
use support::start_local_chain;

const TON: u64 = 1_000_000_000;

async fn balance(chain: &Toncenter, w: &Wallet) -> u64 {
    chain.account(w.address()).await.unwrap().balance
}

async fn fees(chain: &Toncenter) -> u64 {
    chain.local("fees", json!({})).await.unwrap()["fees"].as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_channel_lives_and_closes_on_the_local_chain_to_the_nanoton() {
    let local = start_local_chain();
    let chain = Toncenter::new(&local.1, None).unwrap();
    let payer = Wallet::from_seed(&[1u8; 32]).unwrap();
    let payee = Wallet::from_seed(&[2u8; 32]).unwrap();
    for w in [&payer, &payee] {
        chain
            .local("airdrop", json!({ "address": w.address().to_hex(), "amount": (100 * TON).to_string() }))
            .await
            .unwrap();
    }
    let params = ChannelParams {
        payer: payer.address().clone(),
        payee: payee.address().clone(),
        payer_key: payer.signing_key().verifying_key().to_bytes(),
        channel_id: 1,
        dispute_window: 3600,
    };
    let channel = params.address().unwrap();
    let (payer0, payee0, fees0) = (balance(&chain, &payer).await, balance(&chain, &payee).await, fees(&chain).await);

    // Open and fund: exactly the amount asked for is deposited.
    assert!(actions::channel_state(&chain, &params).await.unwrap().is_none());
    let state = actions::top_up(&chain, &payer, &params, 10 * TON).await.unwrap();
    assert_eq!(state.deposited, 10 * TON);
    let binding = state.binding();
    assert_ne!(binding.instance, 0, "funding fixes the instance");
    let mut costs = vec![("open: deploy + first top-up (wallet v4 deploys too)", fees(&chain).await - fees0)];
    let f = fees(&chain).await;
    let state = actions::top_up(&chain, &payer, &params, 2 * TON).await.unwrap();
    assert_eq!(state.deposited, 12 * TON);
    costs.push(("top-up", fees(&chain).await - f));

    // Cumulative vouchers; the payee claims the newest.
    let v1 = Voucher { channel: channel.clone(), binding, total: TON }.sign(payer.signing_key()).unwrap();
    let v2 = Voucher { channel: channel.clone(), binding, total: 5 * TON / 2 }.sign(payer.signing_key()).unwrap();
    let f = fees(&chain).await;
    assert_eq!(actions::claim(&chain, &payee, &params, &v2).await.unwrap(), 5 * TON / 2);
    costs.push(("claim (payee's wallet v4 deploys too)", fees(&chain).await - f));

    // Refused before anything is sent: an older voucher, a forged one, one above the deposit.
    let before = (balance(&chain, &payee).await, fees(&chain).await);
    let stale = actions::claim(&chain, &payee, &params, &v1).await.unwrap_err();
    assert!(stale.to_string().contains("not newer than the last claim"), "{stale}");
    let forged = Voucher { channel: channel.clone(), binding, total: 3 * TON }
        .sign(&SigningKey::from_bytes(&[9u8; 32]))
        .unwrap();
    assert!(matches!(
        actions::claim(&chain, &payee, &params, &forged).await,
        Err(ChainError::Ton(TonError::BadSignature))
    ));
    let above = Voucher { channel: channel.clone(), binding, total: 13 * TON }.sign(payer.signing_key()).unwrap();
    let err = actions::claim(&chain, &payee, &params, &above).await.unwrap_err();
    assert!(err.to_string().contains("exceeds the channel's deposit"), "{err}");
    assert_eq!((balance(&chain, &payee).await, fees(&chain).await), before, "a refused claim sent nothing");
    // Only the payer's wallet can fund or close, only the payee's can claim.
    assert!(actions::claim(&chain, &payer, &params, &v2).await.is_err());
    assert!(actions::request_close(&chain, &payee, &params).await.is_err());

    // Close: the window holds the payer back, the payee can still claim in it.
    let f = fees(&chain).await;
    let state = actions::request_close(&chain, &payer, &params).await.unwrap();
    assert_ne!(state.closing_since, 0);
    costs.push(("request close", fees(&chain).await - f));
    let early = actions::finalize(&chain, &payer, &params, u64::from(state.closing_since)).await.unwrap_err();
    assert!(early.to_string().contains("dispute window has not passed"), "{early}");
    let v3 = Voucher { channel: channel.clone(), binding, total: 3 * TON }.sign(payer.signing_key()).unwrap();
    let f = fees(&chain).await;
    assert_eq!(actions::claim(&chain, &payee, &params, &v3).await.unwrap(), TON / 2);
    costs.push(("claim", fees(&chain).await - f));
    let now = chain.local("advance", json!({ "seconds": 3600 })).await.unwrap()["now"].as_u64().unwrap();
    let f = fees(&chain).await;
    let state = actions::finalize(&chain, &payer, &params, now).await.unwrap();
    assert!(state.closed);
    costs.push(("finalize", fees(&chain).await - f));
    eprintln!("| action, sent from a v4R2 wallet | every fee, TON |\n|---|---:|");
    for (what, nano) in &costs {
        eprintln!("| {what} | {}.{:09} |", nano / TON, nano % TON);
        // Far below the value each action sends for gas: no action is uneconomic.
        assert!(*nano < GAS_VALUE, "{what} cost {nano}");
    }
    assert_eq!(state.claimed, 3 * TON);
    assert_eq!(state.balance, 0);

    // Every nanoTON: what the payer lost is what the payee gained plus every fee the chain charged.
    let (payer1, payee1, fees1) = (balance(&chain, &payer).await, balance(&chain, &payee).await, fees(&chain).await);
    assert_eq!(payer0 + payee0, payer1 + payee1 + (fees1 - fees0));
    // The payee received its 3 TON less what its two claims cost (each well under the gas value sent).
    let payee_gain = payee1 - payee0;
    assert!(payee_gain < 3 * TON && payee_gain > 3 * TON - 2 * GAS_VALUE, "payee gained {payee_gain}");
}
