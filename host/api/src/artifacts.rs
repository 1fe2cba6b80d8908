//! Artifact listing and download. The store's copy comes first (with
//! PostgreSQL, workers copy every artifact there, so any API process
//! serves a job whichever host ran it); else this host's disk, the
//! embedded default. Paths are checked before anything is read (no `..`,
//! no absolute path, no hidden file), and files are opened through a
//! cap-std directory on the job's artifact directory, so a symlink planted
//! there cannot lead outside it either.

use std::io::Read;
use std::path::{Component, Path as FsPath};

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cap_std::ambient_authority;
use cap_std::fs::Dir;

use super::auth::Operator;
use super::error::{off_thread, path_param, ApiError};
use super::jobs::load_job;
use super::views::{ArtifactEntry, ArtifactList, ErrorBody};
use super::ApiState;

fn job_dir(artifact_root: &FsPath, id: &str) -> Result<Dir, ApiError> {
    let path = artifact_root.join("agent_jobs").join(id);
    Dir::open_ambient_dir(&path, ambient_authority())
        .map_err(|_| ApiError::not_found(format!("job {id} has no artifacts on this server")))
}

fn walk(dir: &Dir, prefix: &str, out: &mut Vec<ArtifactEntry>) -> std::io::Result<()> {
    let mut entries: Vec<_> = dir.entries()?.collect::<Result<_, _>>()?;
    entries.sort_by_key(cap_std::fs::DirEntry::file_name);
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let kind = entry.file_type()?;
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        if kind.is_dir() {
            walk(&entry.open_dir()?, &rel, out)?;
        } else if kind.is_file() {
            out.push(ArtifactEntry {
                path: rel,
                size: entry.metadata()?.len(),
            });
        }
    }
    Ok(())
}

/// `GET /api/queue/jobs/<id>/artifacts`: every artifact file of the job.
#[utoipa::path(get, path = "/api/queue/jobs/{id}/artifacts", tag = "artifacts", operation_id = "job_artifacts",
    params(("id" = String, Path, description = "the job's id")),
    responses((status = 200, description = "every artifact file of the job", body = ArtifactList),
              (status = 404, description = "no such job", body = ErrorBody)))]
pub async fn list(
    State(state): State<ApiState>,
    _operator: Operator,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ArtifactList>, ApiError> {
    let id = path_param(id)?;
    load_job(&state, &id).await?;
    let stored = state.store.artifacts(&id).await?;
    let root = state.artifact_root.clone();
    let job = id.clone();
    let files = off_thread(move || {
        let mut files = Vec::new();
        if let Ok(dir) = job_dir(&root, &job) {
            walk(&dir, "", &mut files)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("listing artifacts: {e}")))?;
        }
        Ok(files)
    })
    .await?;
    // The store's copy where it has one (it is what a download serves),
    // and whatever else this host's disk holds (a job that ran here
    // before its worker copied artifacts).
    let mut listed: std::collections::BTreeMap<String, u64> = files.into_iter().map(|f| (f.path, f.size)).collect();
    listed.extend(stored.into_iter().map(|a| (a.path, a.size)));
    Ok(Json(ArtifactList {
        job_id: id,
        artifacts: listed
            .into_iter()
            .map(|(path, size)| ArtifactEntry { path, size })
            .collect(),
    }))
}

/// Only a plain relative path of visible names can name an artifact: any
/// other (absolute, `..`, `.`, hidden, a backslash or NUL) names none, so
/// it is a 404 before any file is touched.
pub fn check_artifact_path(path: &str) -> Result<&FsPath, ApiError> {
    let p = FsPath::new(path);
    let no_such = || {
        ApiError::not_found(format!(
            "no artifact {path:?}: artifact paths are relative, without '..', '.' or hidden names"
        ))
    };
    if path.is_empty() || path.contains('\\') || path.contains('\0') {
        return Err(no_such());
    }
    for component in p.components() {
        match component {
            Component::Normal(name) if !name.to_string_lossy().starts_with('.') => {}
            _ => return Err(no_such()),
        }
    }
    Ok(p)
}

/// `GET /api/queue/jobs/<id>/artifacts/<path>`: one artifact's bytes.
#[utoipa::path(get, path = "/api/queue/jobs/{id}/artifacts/{path}", tag = "artifacts", operation_id = "job_artifact",
    params(("id" = String, Path, description = "the job's id"),
           ("path" = String, Path, pattern = r"^[^./\\\x00][^/\\\x00]*(/[^./\\\x00][^/\\\x00]*)*$",
            description = "a path from the job's artifact list: relative, no hidden or '..' component")),
    responses((status = 200, description = "the file's bytes, typed by its extension",
                content((String = "application/json"), (String = "application/x-ndjson"),
                        (String = "text/plain"), (Vec<u8> = "application/octet-stream"))),
              (status = 400, description = "a path that is not UTF-8", body = ErrorBody),
              (status = 404, description = "no such job or artifact (a path that is absolute, hidden or has '..' names none)", body = ErrorBody)))]
pub async fn download(
    State(state): State<ApiState>,
    _operator: Operator,
    id_path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (id, path) = path_param(id_path)?;
    let rel = check_artifact_path(&path)?.to_owned();
    let content_type = match rel.extension().and_then(|e| e.to_str()) {
        Some("json") => "application/json",
        Some("jsonl") => "application/x-ndjson",
        Some("log" | "patch" | "txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    };
    load_job(&state, &id).await?;
    if let Some(bytes) = state.store.artifact(&id, &path).await? {
        return Ok(([(header::CONTENT_TYPE, content_type)], bytes).into_response());
    }
    let root = state.artifact_root.clone();
    let bytes = off_thread(move || {
        let dir = job_dir(&root, &id)?;
        let mut file = dir
            .open(&rel)
            .map_err(|_| ApiError::not_found(format!("job {id} has no artifact {path}")))?;
        if !file.metadata().map(|m| m.is_file()).unwrap_or(false) {
            return Err(ApiError::not_found(format!("job {id} has no artifact file {path}")));
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("reading {path}: {e}")))?;
        Ok(bytes)
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, content_type)], bytes).into_response())
}
