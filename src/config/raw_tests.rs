//! Unit tests of the raw layers.
use super::*;

#[test]
fn the_config_file_secret_files_and_the_test_database_are_not_settings() {
    for key in [
        "config",
        "database_url_file",
        "SMTP_URL_FILE",
        "smtp_password_file",
        "test_postgres_url",
        "bench_rounds",
    ] {
        assert!(is_companion_variable(key), "{key}");
    }
    for key in [
        "listen_file",
        "reset_url",
        "configs",
        "file",
        "database_url",
    ] {
        assert!(!is_companion_variable(key), "{key}");
    }
}

fn settings_file(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rekey.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

#[test]
fn an_unknown_key_in_the_file_is_named_with_the_file() {
    let (_dir, path) = settings_file(
        "reset_url = \"https://app.example.com/reset\"\n\
         smtp_uri = \"smtp://user:hunter2@mail.example.com\"\n",
    );
    let figment = Figment::new().merge(toml_file(&path).unwrap());
    let err = extract(&figment).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "smtp_uri in {}: unknown setting; did you mean smtp_url?",
            path.display()
        )
    );
}

#[test]
fn a_toml_syntax_error_gives_the_position_but_never_the_line() {
    for (broken_line, column) in [
        ("database_url = \"postgres://rekey:hunter2@db/rekey", 50),
        ("database_url = postgres://rekey:hunter2@db/rekey", 16),
        ("database_url = \"postgres://db/rekey\" hunter2", 38),
        ("hunter2", 8),
        ("smtp_url = \"smtp://u:hunt\\qer2@db\"", 28),
    ] {
        let (_dir, path) = settings_file(&format!(
            "reset_url = \"https://a.example.com/r\"\n{broken_line}\n"
        ));
        match toml_file(&path) {
            Err(ConfigError::TomlSyntax {
                file,
                line,
                column: at,
                problem,
            }) => {
                assert_eq!((file, line, at), (path.clone(), 2, column), "{broken_line}");
                assert!(!problem.contains("hunt"), "{problem}");
                assert!(!problem.is_empty());
            }
            Err(other) => panic!("{broken_line}: expected TomlSyntax, got {other:?}"),
            Ok(_) => panic!("{broken_line}: expected TomlSyntax, got a layer"),
        }
    }
}

#[test]
fn a_parser_message_that_quotes_the_value_is_replaced() {
    let text = "a = 1\nkey = \"hunter2 and more\"\n";
    let offset = text.find("hunter2").unwrap();
    assert_eq!(
        toml_problem("unexpected `hunter2`", text, offset),
        "not valid TOML"
    );
    assert_eq!(
        toml_problem("duplicate key `key` in document root", text, offset),
        "duplicate key `key` in document root"
    );
}

#[test]
fn a_missing_file_is_named() {
    let missing = toml_file(Path::new("/nonexistent/rekey.toml"));
    assert!(matches!(missing, Err(ConfigError::MissingFile(_))));
}
