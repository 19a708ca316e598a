//! A throwaway ClickHouse server for a test: its own configuration, data directory and
//! loopback ports in a temporary directory; killed (and removed) when dropped.
//! `scripts/test` installs the server when it is missing (Debian's package: 18.16).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running ClickHouse server of a test's own.
pub struct ClickHouse {
    dir: tempfile::TempDir,
    child: Option<Child>,
    http_port: u16,
    /// `http://127.0.0.1:PORT`, for `--clickhouse-url`.
    pub url: String,
    /// With TLS (`start_tls`): `https://127.0.0.1:PORT`.
    pub https_url: Option<String>,
    http: reqwest::Client,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(dir: &Path, http_port: u16, tcp_port: u16, https_port: Option<u16>) -> String {
    let d = dir.display();
    // The server's certificate and key are in its directory as server.crt and server.key.
    let https = match https_port {
        Some(port) => format!(
            "<https_port>{port}</https_port>
  <openSSL><server><certificateFile>{d}/server.crt</certificateFile><privateKeyFile>{d}/server.key</privateKeyFile><verificationMode>none</verificationMode><loadDefaultCAFile>false</loadDefaultCAFile><disableProtocols>sslv2,sslv3,tlsv1,tlsv1_1</disableProtocols></server></openSSL>"
        ),
        None => String::new(),
    };
    format!(
        r#"<?xml version="1.0"?>
<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/server.err.log</errorlog><size>100M</size><count>1</count></logger>
  <http_port>{http_port}</http_port>
  <tcp_port>{tcp_port}</tcp_port>
  {https}
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <user_files_path>{d}/user_files/</user_files_path>
  <format_schema_path>{d}/format_schemas/</format_schema_path>
  <mark_cache_size>268435456</mark_cache_size>
  <uncompressed_cache_size>268435456</uncompressed_cache_size>
  <users_config>{d}/users.xml</users_config>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
  <timezone>UTC</timezone>
  <mlock_executable>false</mlock_executable>
</yandex>
"#
    )
}

const USERS: &str = r#"<?xml version="1.0"?>
<yandex>
  <profiles><default><max_memory_usage>2000000000</max_memory_usage></default></profiles>
  <users><default><password></password><networks><ip>127.0.0.1</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
"#;

impl ClickHouse {
    /// Creates and starts a server, and waits until it answers.
    pub async fn start() -> ClickHouse {
        Self::start_with(None).await
    }

    /// Creates and starts a server that also serves HTTPS with `cert` and `key` (PEM).
    pub async fn start_tls(cert: &Path, key: &Path) -> ClickHouse {
        Self::start_with(Some((cert, key))).await
    }

    async fn start_with(tls: Option<(&Path, &Path)>) -> ClickHouse {
        let dir = tempfile::Builder::new()
            .prefix("linkrift-test-ch")
            .tempdir()
            .unwrap();
        let (http_port, tcp_port) = (free_port(), free_port());
        let https_port = tls.map(|(cert, key)| {
            std::fs::copy(cert, dir.path().join("server.crt")).unwrap();
            std::fs::copy(key, dir.path().join("server.key")).unwrap();
            free_port()
        });
        std::fs::write(
            dir.path().join("config.xml"),
            config(dir.path(), http_port, tcp_port, https_port),
        )
        .unwrap();
        std::fs::write(dir.path().join("users.xml"), USERS).unwrap();
        let mut ch = ClickHouse {
            url: format!("http://127.0.0.1:{http_port}"),
            https_url: https_port.map(|port| format!("https://127.0.0.1:{port}")),
            dir,
            child: None,
            http_port,
            http: reqwest::Client::new(),
        };
        ch.resume().await;
        ch
    }

    /// Starts the server (again), on the same ports and data, and waits until it answers.
    pub async fn resume(&mut self) {
        assert!(self.child.is_none(), "ClickHouse is already running");
        let out = std::fs::File::create(self.dir.path().join("stdout.log")).unwrap();
        let child = Command::new("clickhouse-server")
            .arg(format!(
                "--config-file={}",
                self.dir.path().join("config.xml").display()
            ))
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .expect("clickhouse-server runs (scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ping = self
                .http
                .get(format!("http://127.0.0.1:{}/ping", self.http_port))
                .send()
                .await;
            if ping.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "clickhouse-server exited ({status}): {}",
                    std::fs::read_to_string(self.dir.path().join("stdout.log")).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "ClickHouse did not start in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's process, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Kills the server (as a crash or an outage would) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs a query; its text answer (trimmed), or ClickHouse's error.
    pub async fn try_query(&self, sql: &str) -> Result<String, String> {
        let r = self
            .http
            .post(&self.url)
            .body(sql.to_string())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = r.status();
        let text = r.text().await.map_err(|e| e.to_string())?;
        if status.is_success() {
            Ok(text.trim().to_string())
        } else {
            Err(format!("{sql}: {text}"))
        }
    }

    /// Runs a query; its text answer (trimmed).
    pub async fn query(&self, sql: &str) -> String {
        self.try_query(sql).await.unwrap_or_else(|e| panic!("{e}"))
    }

    /// A query's single number.
    pub async fn number(&self, sql: &str) -> u64 {
        let text = self.query(sql).await;
        text.parse()
            .unwrap_or_else(|_| panic!("{sql}: not a number: {text}"))
    }
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}
