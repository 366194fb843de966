//! Malformed pipelines: a located error (file:LINE:COL, dotted key), exit code 2,
//! no panic, and nothing written to the store.

mod common;

use common::*;

/// Runs `plan` and `run` on a bad file in a fresh workspace; both must fail with
/// exit code 2, create no store, and print the same located error. Returns stderr.
#[track_caller]
fn reject(text: &str) -> (String, String) {
    let ws = Ws::new();
    let file = ws.write("bad.toml", text);
    let file_arg = file.to_str().unwrap();
    let plan = ws.run(&["plan", file_arg, "--format", "json"]).expect_code(2);
    assert!(plan.stdout.trim().is_empty(), "no plan is printed: {}", plan.describe());
    let run = ws.run(&["run", file_arg, "--json"]).expect_code(2);
    assert!(!ws.db().exists(), "a bad pipeline must write nothing to the store\n{}", run.describe());
    assert!(!ws.store().exists(), "not even the workspace directory\n{}", run.describe());
    assert_eq!(plan.stderr, run.stderr, "plan and run report the same error");
    assert!(run.stderr.contains("error"), "{}", run.describe());
    (run.stderr, file.display().to_string())
}

/// Asserts that `stderr` holds an error at `file:line:` naming `key` and containing every `words`.
#[track_caller]
fn assert_located(stderr: &str, file: &str, line: usize, key: &str, words: &[&str]) {
    let prefix = format!("{file}:{line}:");
    let found = stderr.lines().find(|l| l.contains(&prefix));
    let Some(found) = found else {
        panic!("expected an error located at {prefix}COL\n--- stderr ---\n{stderr}");
    };
    // file:LINE:COL — the column is a positive number.
    let col: String = found[found.find(&prefix).unwrap() + prefix.len()..].chars().take_while(char::is_ascii_digit).collect();
    assert!(col.parse::<usize>().is_ok_and(|c| c >= 1), "no column after {prefix}: {found}");
    if !key.is_empty() {
        assert!(found.contains(key), "the error must name the key `{key}`: {found}");
    }
    for w in words {
        assert!(stderr.contains(w), "expected {w:?} in the error\n--- stderr ---\n{stderr}");
    }
}

#[test]
fn toml_syntax_error() {
    let (err, file) = reject(
        r#"[pipeline]
name = "x"

[stages.a
kind = "command"
run = "true"
"#,
    );
    assert_located(&err, &file, 4, "stages.a", &["TOML"]);
    assert!(!err.contains(": pipeline:"), "the unterminated header is the stage's, not [pipeline]'s: {err}");
}

#[test]
fn an_unterminated_array_names_its_key() {
    let (err, file) =
        reject("[pipeline]\nname = \"x\"\n\n[axes]\nx = [1,\n  \"a]\",\n  2\n\n[stages.a]\nkind = \"command\"\nrun = \"true\"\n");
    assert!(err.contains("axes.x: TOML syntax error"), "{err}");
    assert!(err.contains(&format!("{file}:")), "{err}");
}

#[test]
fn toml_syntax_error_in_a_value_names_its_key() {
    let (err, file) = reject(
        r#"[pipeline]
name = "x"

[stages.train]
kind = "command"
run = "true"
gpus = 1.2.3
"#,
    );
    assert_located(&err, &file, 7, "stages.train.gpus", &["TOML"]);
}

#[test]
fn unknown_key_for_the_kind() {
    let (err, file) = reject(
        r#"[pipeline]
name = "x"

[stages.data]
kind = "caption_ingest"
source = "builtin:shapes"
imagez = 10
"#,
    );
    assert_located(&err, &file, 7, "stages.data.imagez", &["unknown key", "caption_ingest", "images"]);
}

#[test]
fn wrong_value_type() {
    let (err, file) = reject(
        r#"[pipeline]
name = "x"

[stages.data]
kind = "caption_ingest"
source = "builtin:shapes"
images = "many"
"#,
    );
    assert_located(&err, &file, 7, "stages.data.images", &["integer", "many"]);
}

#[test]
fn wrong_value_type_arriving_through_an_axis() {
    let (err, file) = reject(
        r#"[pipeline]
name = "x"

[axes]
n = [8, "lots"]

[stages.data]
kind = "caption_ingest"
source = "builtin:shapes"
images = "${n}"
"#,
    );
    assert_located(&err, &file, 10, "stages.data.images", &["integer", "lots", "axis `n`"]);
}

#[test]
fn a_type_error_through_an_axis_reports_only_the_real_problem() {
    // `run` is present; only its value has the wrong type.
    let (err, file) = reject(
        r#"[pipeline]
name = "x"

[axes]
g = [1, 2]

[stages.train]
kind = "command"
run = "${g}"
"#,
    );
    assert_located(&err, &file, 9, "stages.train.run", &["expected a string", "axis `g`"]);
    assert!(!err.contains("missing required parameter"), "`run` is given: no spurious 'missing' error\n{err}");
}

#[test]
fn unknown_kind() {
    let (err, file) = reject(
        r#"[pipeline]
name = "x"

[stages.a]
kind = "no_such_kind"
"#,
    );
    assert_located(&err, &file, 5, "stages.a.kind", &["no_such_kind", "caption_ingest", "command"]);
}

#[test]
fn needs_names_a_missing_stage() {
    let (err, file) = reject(
        r#"[pipeline]
name = "x"

[stages.a]
kind = "command"
run = "true"

[stages.b]
kind = "command"
run = "true"
needs = ["a", "ghost"]
"#,
    );
    assert_located(&err, &file, 11, "stages.b.needs", &["ghost"]);
}

#[test]
fn reference_to_an_undefined_axis() {
    let (err, file) = reject(
        r#"[pipeline]
name = "x"

[axes]
seed = [0, 1]

[stages.a]
kind = "command"
run = "echo ${sed}"
"#,
    );
    assert_located(&err, &file, 9, "stages.a.run", &["sed", "undefined axis"]);
}

#[test]
fn empty_axis() {
    let (err, file) = reject(
        r#"[pipeline]
name = "x"

[axes]
seed = [0]
lr = []

[stages.a]
kind = "command"
run = "echo ${seed}"
"#,
    );
    assert_located(&err, &file, 6, "axes.lr", &["empty"]);
}

#[test]
fn cycle_prints_the_cycle() {
    let (err, file) = reject(
        r#"[pipeline]
name = "x"

[stages.a]
kind = "command"
needs = ["c"]
run = "true"

[stages.b]
kind = "command"
needs = ["a"]
run = "true"

[stages.c]
kind = "command"
needs = ["b"]
run = "true"
"#,
    );
    assert!(err.contains("cycle"), "{err}");
    // The cycle a → b → c → a, printed from whichever stage it starts at, in
    // either direction (data flow or `needs`).
    let rotations = ["a → b → c → a", "b → c → a → b", "c → a → b → c", "a → c → b → a", "c → b → a → c", "b → a → c → b"];
    assert!(rotations.iter().any(|r| err.contains(r)), "the cycle is printed with its stage names\n{err}");
    let line = err.lines().find(|l| l.contains("cycle")).unwrap();
    let (stage, at) = [("a", 6), ("b", 11), ("c", 16)]
        .into_iter()
        .find(|(s, _)| line.contains(&format!("stages.{s}.needs")))
        .unwrap_or_else(|| panic!("the cycle error names a `needs` key: {line}"));
    assert_located(&err, &file, at, &format!("stages.{stage}.needs"), &[]);
}

#[test]
fn two_stage_cycle() {
    let (err, file) = reject(
        r#"[pipeline]
name = "x"

[stages.a]
kind = "command"
needs = ["b"]
run = "true"

[stages.b]
kind = "command"
needs = ["a"]
run = "true"
"#,
    );
    assert!(err.contains("a → b → a") || err.contains("b → a → b"), "{err}");
    let located = [(6, "stages.a.needs"), (11, "stages.b.needs")]
        .iter()
        .any(|(line, key)| err.lines().any(|l| l.contains(&format!("{file}:{line}:")) && l.contains(key)));
    assert!(located, "the cycle error is located at a `needs` of the cycle\n{err}");
}

#[test]
fn missing_pipeline_name_and_several_errors_at_once() {
    let (err, file) = reject(
        r#"[pipeline]
description = "no name"

[stages.a]
kind = "command"
run = "true"
colour = 1

[stages.b]
kind = "caption_ingest"
source = "builtin:shapes"
images = "many"
"#,
    );
    assert!(err.contains("name"), "{err}");
    // Every problem is reported, not just the first.
    assert_located(&err, &file, 7, "stages.a.colour", &[]);
}

#[test]
fn an_unreadable_file_is_an_error_not_a_panic() {
    let ws = Ws::new();
    let out = ws.run(&["run", ws.root().join("nope.toml").to_str().unwrap()]);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(out.stderr.contains("nope.toml"), "{}", out.describe());
    assert!(!ws.db().exists());
    // An endless "file" is cut off, not read until memory runs out.
    let out = ws.run(&["plan", "/dev/zero"]).expect_code(2);
    assert!(out.stderr.contains("/dev/zero") && out.stderr.contains("larger than"), "{}", out.describe());
}

#[test]
fn a_referenced_empty_axis_is_reported_as_empty_not_undefined() {
    let (err, file) = reject(
        r#"[pipeline]
name = "x"

[axes]
seed = []

[stages.a]
kind = "command"
run = "echo ${seed}"
"#,
    );
    assert_located(&err, &file, 5, "axes.seed", &["empty"]);
    assert!(!err.contains("undefined axis"), "`seed` is defined (empty): no misleading 'undefined axis' error\n{err}");
}

#[test]
fn an_error_in_a_very_long_line_shows_a_window_around_it() {
    let long = "a".repeat(100_000);
    let (err, file) = reject(&format!(
        "[pipeline]\nname = \"x\"\n\n[axes]\nseed = [\"{long}\", 7, \"{long}\"]\n\n[stages.a]\nkind = \"command\"\nrun = \"echo ${{seed}}\"\n"
    ));
    assert_located(&err, &file, 5, "axes.seed", &["duplicate value"]);
    assert!(err.len() < 2_000, "the snippet is cut to the error's surroundings: {} bytes", err.len());
    // The caret still sits under the duplicate's first character.
    let lines: Vec<&str> = err.lines().collect();
    let at = lines.iter().position(|l| l.starts_with("5 |")).expect("the snippet line");
    let caret = lines[at + 1].chars().position(|c| c == '^').unwrap();
    assert_eq!(lines[at].chars().nth(caret), Some('"'), "{}\n{}", lines[at], lines[at + 1]);
}

#[test]
fn axis_values_that_read_the_same_as_text_are_rejected() {
    let (err, file) = reject(
        r#"[pipeline]
name = "x"

[axes]
x = [1, "1", 1.5]

[stages.a]
kind = "command"
run = "echo ${x}"
"#,
    );
    assert_located(&err, &file, 5, "axes.x", &["reads as the earlier value 1", "differ as text"]);
}

#[test]
fn a_missing_upstream_kind_is_a_located_error() {
    let (err, file) = reject(
        r#"[pipeline]
name = "x"

[stages.data]
kind = "caption_ingest"
source = "builtin:shapes"

[stages.train]
kind = "train"
text = "frozen"
needs = ["data"]
"#,
    );
    assert_located(&err, &file, 11, "stages.train.needs", &["`train` needs exactly one stage of kind `text_embed`", "found none"]);

    let (err, file) = reject(
        r#"[pipeline]
name = "x"

[stages.data]
kind = "caption_ingest"
source = "builtin:shapes"

[stages.eval]
kind = "evaluate"
needs = ["data"]
"#,
    );
    assert_located(&err, &file, 10, "stages.eval.needs", &["kind `train` among its `needs` and their upstream stages"]);
}

/// Mistakes on the command line are usage errors: exit code 2 and a message
/// that says what is wrong, not a bare OS error.
#[test]
fn command_line_mistakes_exit_2_with_a_clear_message() {
    let ws = Ws::new();
    let file = ws.write(
        "two.toml",
        "[pipeline]\nname = \"two\"\n\n[stages.a]\nkind = \"command\"\nrun = \"echo a > $ABLATE_OUT/a.txt\"\n\n[stages.b]\nkind = \"command\"\nneeds = [\"a\"]\nrun = \"true\"\n",
    );
    let f = file.to_str().unwrap();
    let a_file = ws.write("plain.txt", "not a folder").display().to_string();
    let b = key_of(&ws.plan(&file), "b");
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["run", f, "--jobs", "0"], "--jobs"),
        (vec!["run", f, "--cpus", "0"], "--cpus"),
        (vec!["bench-train", "--model", "vit-huge"], "vit-micro, vit-tiny"),
        (vec!["bench-train", "--loss", "mse"], "infonce, siglip, cosine"),
        (vec!["exec", &b], "upstream stage `a`"),
        (vec!["--db", "postgres://u:p@", "runs"], "not a valid database URL"),
        (vec!["run", f, "--detach"], "--detach is an option of --executor slurm"),
        (vec!["run", f, "--retries", "2"], "--retries is an option of --executor slurm"),
        (vec!["run", f, "--executor", "slurm", "--array-limit", "0"], "--array-limit must be 1 or more"),
        (vec!["run", f, "--only", "a", "--force", "b"], "--force b: `b` does not run under --only a"),
    ];
    for (args, says) in cases {
        let out = ws.run(&args).expect_code(2);
        assert!(out.stderr.contains(says), "{args:?}\n{}", out.describe());
    }
    // Empty variables mean unset (`ABLATE_DB= ablate runs`).
    let out = std::process::Command::new(bin())
        .args(["--workspace", ws.store().to_str().unwrap(), "plan", f])
        .env("ABLATE_DB", "")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = std::process::Command::new(bin()).args(["plan", f]).env("ABLATE_WORKSPACE", "").current_dir(ws.root()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out = std::process::Command::new(bin()).args(["--workspace", &a_file, "run", f]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a directory"), "{}", String::from_utf8_lossy(&out.stderr));
    ws.run(&["run", f]).ok();
    let folder = ws.root().display().to_string();
    let db = ws.db().display().to_string();
    let in_store = ws.store().join("report.html").display().to_string();
    let missing = ws.root().join("no/such/folder/plot.png").display().to_string();
    for (args, says) in [
        (vec!["plot", "bars", "two", "--metric", "m", "--by", "x", "-o", &missing], "there is no folder"),
        (vec!["report", "two", "--html", &folder], "is a directory"),
        (vec!["report", "two", "--html", &db], "ending in .html"),
        (vec!["report", "two", "--html", &in_store], "inside the workspace"),
        (vec!["report", f, "--html", f], "ending in .html"),
    ] {
        let out = ws.run(&args).expect_code(2);
        assert!(out.stderr.contains(says), "{args:?}\n{}", out.describe());
    }
    ws.run(&["runs"]).ok(); // the store is intact
}

#[test]
fn a_grid_too_large_to_plan_is_refused_before_it_is_built() {
    let values: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    let values = values.join(", ");
    let (err, file) = reject(&format!(
        "[pipeline]\nname = \"huge\"\n\n[axes]\na = [{values}]\nb = [{values}]\nc = [{values}]\n\n[stages.x]\nkind = \"command\"\nrun = \"echo ${{a}} ${{b}} ${{c}}\"\n"
    ));
    assert_located(&err, &file, 9, "stages.x", &["more than 1000000 stage instances", "a 1000 × b 1000 × c 1000 = 1000000000"]);
}

/// `x-y` and `x_y` (or `ab` and `AB`) would share one `ABLATE_INPUT_` variable.
#[test]
fn upstream_stages_whose_input_variables_collide_are_a_located_error() {
    let (err, file) = reject(
        "[pipeline]\nname = \"x\"\n\n[stages.x-y]\nkind = \"command\"\nrun = \"true\"\n\n[stages.x_y]\nkind = \"command\"\nrun = \"true\"\n\n\
         [stages.down]\nkind = \"command\"\nneeds = [\"x-y\", \"x_y\"]\nrun = \"true\"\n",
    );
    assert_located(&err, &file, 14, "stages.down.needs", &["`x-y` and `x_y` would both be $ABLATE_INPUT_X_Y"]);
}

/// `text_similarity` with neither SugarCrepe nor an ingest has nothing to
/// score: an error when compiling, not after the encoder has loaded.
#[test]
fn text_similarity_without_caption_pairs_is_a_located_error() {
    let (err, file) = reject("[pipeline]\nname = \"x\"\n\n[stages.sim]\nkind = \"text_similarity\"\nencoder = \"minilm\"\n");
    assert_located(&err, &file, 4, "stages.sim", &["no caption pairs", "sugarcrepe"]);
}

/// An axis no stage references adds nothing to the grid: said, located.
#[test]
fn an_axis_no_stage_uses_is_a_located_warning() {
    let ws = Ws::new();
    let file = ws.write("u.toml", "[pipeline]\nname = \"u\"\n\n[axes]\nseed = [0, 1]\nlos = [\"a\", \"b\"]\n\n[stages.s]\nkind = \"command\"\nrun = \"echo ${seed}\"\n");
    let out = ws.run(&["plan", file.to_str().unwrap()]).ok();
    assert!(
        out.stderr.contains(&format!("{}:6:", file.display())) && out.stderr.contains("axes.los: no stage uses this axis"),
        "{}",
        out.describe()
    );
    assert!(!out.stderr.contains("axes.seed"), "{}", out.describe());
}

#[test]
fn parameter_values_a_kind_cannot_use_are_located_errors() {
    let stage = |body: &str| format!("[pipeline]\nname = \"x\"\n\n[stages.a]\nkind = \"command\"\nrun = \"true\"\n\n[stages.s]\n{body}\n");
    for (body, line, key, says) in [
        ("kind = \"command\"\nrun = \"  \"", 10, "stages.s.run", "is empty"),
        ("kind = \"command\"\nrun = \"true\"\nenv = [\"A B=1\"]", 11, "stages.s.env", "not NAME=VALUE"),
        ("kind = \"command\"\nrun = \"true\"\nenv = [\"=x\"]", 11, "stages.s.env", "not NAME=VALUE"),
        ("kind = \"command\"\nrun = \"true\"\nenv = [\"ABLATE_OUT=/tmp\"]", 11, "stages.s.env", "ABLATE_ are ablate's own"),
        ("kind = \"command\"\nrun = \"true\"\nenv = [\"X=1\", \"X=2\"]", 11, "stages.s.env", "sets X twice"),
        ("kind = \"command\"\nrun = \"true\"\nneeds = [\"a\", \"a\"]", 11, "stages.s.needs", "names `a` twice"),
        ("kind = \"text_similarity\"\nencoder = \"minilm\"\nthreshold = 2.0", 11, "stages.s.threshold", "[-1, 1]"),
    ] {
        let (err, file) = reject(&stage(body));
        assert_located(&err, &file, line, key, &[says]);
    }
}
