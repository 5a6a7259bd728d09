//! A realistic fleet: 1,000 configured apps in one config, against the real lab.

use crate::support::{config_in, rotate, tempdir};
use rotate_cli::Exit;
use rotate_tests::shared;

#[tokio::test]
async fn a_thousand_apps_plan_and_run_step_3_through_preflight_and_commit() {
    let lab = shared();
    let dir = tempdir("scale");
    let n: usize = std::env::var("SCALE_N")
        .map(|v| v.parse().unwrap())
        .unwrap_or(1000);
    let names: Vec<String> = (0..n).map(|i| format!("fleet{i:04}")).collect();
    let apps: Vec<&str> = names.iter().map(String::as_str).collect();
    let cfg = config_in(lab, &dir, &apps, "");

    // A full plan (every configured step): preflight passes, every app is planned.
    let t = std::time::Instant::now();
    let (exit, v) = rotate(&cfg, &["plan"]).await;
    let plan_time = t.elapsed();
    assert_eq!(exit, Exit::Changes, "{}", crate::support::errors(&v));
    assert!(
        v["preflight"]["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["ok"] == true)
    );
    let per_app: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["targets"].as_array().unwrap().len() == n)
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        per_app,
        ["agents", "leaf"],
        "every app planned in steps 3 and 4"
    );
    eprintln!("plan of 1,000 apps: {plan_time:?}");

    // Step 3 for all of them: passes preflight and commits every app.
    let t = std::time::Instant::now();
    let (exit, v) = rotate(&cfg, &["run", "--step", "agents"]).await;
    eprintln!("run --step agents of 1,000 apps: {:?}", t.elapsed());
    assert_eq!(exit, Exit::Ok, "{}", crate::support::errors(&v));
    let targets = v["steps"][0]["targets"].as_array().unwrap();
    assert_eq!(targets.len(), n);
    assert!(targets.iter().all(|t| t["outcome"] == "committed"));
    // Real clients agree, spot-checked: the first and the last app log in with the files
    // the run wrote.
    for app in [&"fleet0000".to_string(), &format!("fleet{:04}", n - 1)] {
        let login = crate::support::bao_login(lab, &dir.join("home").join(app));
        assert!(login["auth"]["client_token"].is_string(), "{login:#}");
    }
}
