use super::*;

fn record(hash: u8, cost: u64) -> ChargeRecord {
    ChargeRecord {
        request_hash: [hash; 32],
        client_key: [9; 32],
        worker_id: "w".into(),
        worker_url: "http://w".into(),
        payout_address: None,
        model_id: "m".into(),
        prompt_tokens: 3,
        completion_tokens: 4,
        worker_cost: NanoTon(cost),
        commission: NanoTon(cost / 10),
        charge: NanoTon(cost + cost / 10),
        receipt: vec![1, 2, 3],
        created_at: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_group_commit_once_each_and_survive_reopening() {
    let dir = std::env::temp_dir().join(format!("cocoon-ledger-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ledger.sqlite");
    {
        let ledger = std::sync::Arc::new(Ledger::open(&path).unwrap());
        ledger.deposit(&[9; 32], NanoTon(1_000_000), Some("test")).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200u8 {
            let l = ledger.clone();
            tasks.push(tokio::spawn(async move { l.charge(record(i, 100)).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let dup = ledger.charge(record(7, 100)).await.unwrap_err();
        assert!(matches!(dup, LedgerError::AlreadyCharged(_)), "{dup}");
        assert!(ledger.is_charged(&[7; 32]).unwrap());
    }
    let ledger = Ledger::open(&path).unwrap();
    let t = ledger.totals().unwrap();
    assert_eq!(
        (t.charges, t.charged, t.worker_earnings, t.commission),
        (200, NanoTon(22_000), NanoTon(20_000), NanoTon(2_000))
    );
    let a = ledger.account(&[9; 32]).unwrap();
    assert_eq!(a, Account { deposited: NanoTon(1_000_000), charged: NanoTon(22_000) });
    assert_eq!(ledger.worker_credits().unwrap()[0].requests, 200);
    assert!(matches!(ledger.deposit(&[9; 32], NanoTon(u64::MAX), None), Err(LedgerError::Amount(_))));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_earn_only_what_their_clients_paid_for_in_order() {
    let dir = std::env::temp_dir().join(format!("cocoon-ledger-paid-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ledger = Ledger::open(&dir.join("ledger.sqlite")).unwrap();
    let charge = |hash: u8, client: u8, payout: &str, cost: u64| ChargeRecord {
        client_key: [client; 32],
        payout_address: Some(payout.into()),
        ..record(hash, cost)
    };
    // Client 1 paid 330 (three charges of 110); client 2 paid nothing.
    ledger.deposit(&[1; 32], NanoTon(330), None).unwrap();
    for (h, payout) in [(1, "A"), (2, "B"), (3, "A"), (4, "A")] {
        ledger.charge(charge(h, 1, payout, 100)).await.unwrap();
    }
    for h in 10..30 {
        ledger.charge(charge(h, 2, "B", 100)).await.unwrap();
    }
    let earned = ledger.earnings_by_payout().unwrap();
    assert_eq!(earned, vec![("A".into(), NanoTon(200)), ("B".into(), NanoTon(100))], "only covered charges pay");
    assert_eq!(
        ledger.earnings_by_payout_charged().unwrap(),
        vec![("A".into(), NanoTon(300)), ("B".into(), NanoTon(2100))]
    );
    // Client 2 pays for 10 charges: B earns those, and earlier earnings never shrink.
    ledger.deposit(&[2; 32], NanoTon(1100), None).unwrap();
    let earned = ledger.earnings_by_payout().unwrap();
    assert_eq!(earned, vec![("A".into(), NanoTon(200)), ("B".into(), NanoTon(1100))]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn vouchers_credit_what_they_add_once_and_never_less() {
    let dir = std::env::temp_dir().join(format!("cocoon-ledger-vouchers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let ledger = Ledger::open(&dir.join("ledger.sqlite")).unwrap();
    let key = [5u8; 32];
    let credit = |total: u64| ledger.credit_voucher("0:aa", &key, "{}", NanoTon(1000), NanoTon(total), "sig").unwrap();
    assert_eq!(credit(100), NanoTon(100));
    assert_eq!(credit(250), NanoTon(150));
    assert_eq!(credit(250), NanoTon(0), "the same voucher again credits nothing");
    assert_eq!(credit(200), NanoTon(0), "an older voucher credits nothing");
    assert_eq!(ledger.account(&key).unwrap().deposited, NanoTon(250));
    let ch = ledger.client_channel("0:aa").unwrap().unwrap();
    assert_eq!((ch.voucher_total, ch.claimed, ch.deposit_seen), (NanoTon(250), NanoTon(0), NanoTon(1000)));
    // The channel is bound to its first account.
    assert!(ledger.credit_voucher("0:aa", &[6; 32], "{}", NanoTon(1000), NanoTon(300), "sig").is_err());
    assert_eq!(ledger.account(&[6; 32]).unwrap().deposited, NanoTon(0));
    // Claims: never above the newest voucher (the schema refuses it), never backwards.
    ledger.record_claim("0:aa", NanoTon(250), NanoTon(250)).unwrap();
    ledger.record_claim("0:aa", NanoTon(100), NanoTon(0)).unwrap();
    assert_eq!(ledger.client_channel("0:aa").unwrap().unwrap().claimed, NanoTon(250));
    assert!(ledger.record_claim("0:aa", NanoTon(251), NanoTon(1)).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
