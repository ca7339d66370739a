// Annotated sample for release-graph's semgrep rules (`ruleid:` marks the next line as a finding).
package main

import (
	"crypto/tls"
	"database/sql"
	"fmt"
	"os/exec"
)

func handle(db *sql.DB, name string) {
	// ruleid: rg-go-exec-shell
	exec.Command("sh", "-c", "echo "+name).Run()
	// ruleid: rg-go-exec-shell
	exec.Command("/bin/bash", "-c", name).Run()
	// ok: rg-go-exec-shell
	exec.Command("echo", name).Run()
	// ruleid: rg-go-tls-insecure-skip-verify
	_ = &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true}
	// ok: rg-go-tls-insecure-skip-verify
	_ = &tls.Config{MinVersion: tls.VersionTLS12}
	// ruleid: rg-go-sql-string-building
	db.Query(fmt.Sprintf("SELECT * FROM items WHERE name = '%s'", name))
	// ok: rg-go-sql-string-building
	db.Query("SELECT * FROM items WHERE name = $1", name)
	// ruleid: rg-go-hardcoded-password
	dbPassword := "hunter2hunter2"
	_ = dbPassword
}

func main() { handle(nil, "x") }
