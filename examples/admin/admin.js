'use strict';
/**
 * A small admin module for oneseekd, talking to the daemon through its SQLite database
 * (HOME/oneseek.db), as CONTRACT.md section 6 allows:
 *
 *   - read anything;
 *   - INSERT into training_requests (status 'pending'): the daemon validates the row exactly like
 *     a dropped file and writes its verdict back ('queued' | 'rejected' | 'duplicate');
 *   - UPDATE base_models.enabled and base_models.display_name;
 *   - UPDATE runs.cancel_requested = 1 on a queued or running run;
 *   - INSERT into model_downloads (status 'pending'): the daemon downloads the model from the
 *     Hub (pinned, every file checked) into base_models/ and writes the outcome back;
 *   - UPDATE model_downloads.cancel_requested = 1 on a pending or running download.
 *
 * Everything else belongs to the daemon. Every write here is one statement in its own
 * transaction, on a WAL connection with a 30 s busy timeout, so it waits for the daemon's
 * write lock instead of failing with "database is locked".
 *
 *   const admin = require('./admin');
 *   admin.open('/srv/oneseek');
 *   const id = admin.requestTraining({ base_models: ['llama'], dataset: 'civic.jsonl' });
 *   admin.requestStatus(id);   // { status: 'queued', run: { run_id, state, progress, ... } }
 *   const pull = admin.pullModel('Qwen/Qwen2.5-7B-Instruct');
 *   admin.download(pull);      // { status: 'running', bytes_done, bytes_total, progress, ... }
 *   admin.close();
 *
 * open() also returns an Admin object with the same methods, for programs that hold several
 * homes at once.
 */

const fs = require('node:fs');
const path = require('node:path');
const Database = require('better-sqlite3');

const BUSY_TIMEOUT_MS = 30000;
const REQUIRED_TABLES = [
  'base_models',
  'training_requests',
  'runs',
  'model_trainings',
  'model_downloads',
];
const RUN_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;
const MAX_DISPLAY_NAME = 300; // base_models.display_name is VARCHAR(300)

const MODEL_COLUMNS = `key, display_name, detected_name, path, root, state, state_reason, enabled,
  model_type, architectures, parameter_count, size_bytes, weight_format, has_tokenizer,
  first_seen_at, updated_at, state_changed_at`;

const RUN_COLUMNS = `id, run_id, request_id, request_key, state, priority, version, base_models,
  dataset, attempts, cancel_requested, outcome, exit_code, error, log_path, progress, queued_at,
  started_at, finished_at, heartbeat_at`;

const DOWNLOAD_COLUMNS = `id, repository, revision, folder, allow_pickle, status, source, host,
  pid, "commit", bytes_total, bytes_done, progress, error, problems, cancel_requested, model_key,
  created_at, started_at, finished_at, heartbeat_at`;

function parseJson(text) {
  if (text === null || text === undefined) return null;
  try {
    return JSON.parse(text);
  } catch {
    return text; // never expected: the daemon writes JSON; hand the raw text back
  }
}

function modelOf(row) {
  return {
    ...row,
    enabled: Boolean(row.enabled),
    has_tokenizer: Boolean(row.has_tokenizer),
    architectures: parseJson(row.architectures),
  };
}

function runOf(row) {
  return {
    ...row,
    cancel_requested: Boolean(row.cancel_requested),
    base_models: parseJson(row.base_models),
    progress: parseJson(row.progress),
  };
}

function downloadOf(row) {
  return {
    ...row,
    allow_pickle: Boolean(row.allow_pickle),
    cancel_requested: Boolean(row.cancel_requested),
    progress: parseJson(row.progress),
    problems: parseJson(row.problems) || [],
  };
}

function checkDownloadId(id) {
  if (!Number.isInteger(id) || id < 1) {
    throw new TypeError(`a download id is a positive integer, got ${String(id)}`);
  }
}

function checkKey(key) {
  if (typeof key !== 'string' || key === '') {
    throw new TypeError(`a model key is a non-empty string, got ${JSON.stringify(key)}`);
  }
}

function checkRunId(runId) {
  if (typeof runId !== 'string' || !RUN_ID_PATTERN.test(runId)) {
    throw new TypeError(`not a run id: ${JSON.stringify(runId)} (e.g. "run-20261124-190000-abc123")`);
  }
}

class Admin {
  /** Opens HOME/oneseek.db (which the daemon or `oneseekctl db upgrade` created). */
  constructor(home) {
    if (typeof home !== 'string' || home === '') {
      throw new TypeError('open(home): home is the daemon\'s home folder (the --home DIR)');
    }
    this.home = path.resolve(home);
    this.dbPath = path.join(this.home, 'oneseek.db');
    if (!fs.existsSync(this.dbPath)) {
      throw new Error(
        `no oneseekd database at ${this.dbPath}: start the daemon on that home ` +
          `(oneseekd --home ${this.home}) or run \`oneseekctl --home ${this.home} db upgrade\``,
      );
    }
    // fileMustExist: never create a database; timeout: better-sqlite3's busy timeout.
    this.db = new Database(this.dbPath, { fileMustExist: true, timeout: BUSY_TIMEOUT_MS });
    try {
      this.db.pragma(`busy_timeout = ${BUSY_TIMEOUT_MS}`);
      const mode = this.db.pragma('journal_mode = WAL', { simple: true });
      if (String(mode).toLowerCase() !== 'wal') {
        throw new Error(`${this.dbPath} could not be put in WAL mode (journal_mode is ${mode})`);
      }
      this.db.pragma('foreign_keys = ON');
      this.db.pragma('synchronous = NORMAL'); // as the daemon: durable at each WAL checkpoint
      const present = new Set(
        this.db
          .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
          .pluck()
          .all(),
      );
      const missing = REQUIRED_TABLES.filter((t) => !present.has(t));
      if (missing.length > 0) {
        throw new Error(
          `${this.dbPath} has no table ${missing.join(', ')}: it is not an up-to-date oneseekd ` +
            `database; run \`oneseekctl --home ${this.home} db upgrade\` (this module never ` +
            'creates tables)',
        );
      }
      this._prepare();
    } catch (err) {
      this.db.close();
      throw err;
    }
  }

  _prepare() {
    const db = this.db;
    this.sql = {
      models: db.prepare(`SELECT ${MODEL_COLUMNS} FROM base_models ORDER BY key`),
      presentModels: db.prepare(
        `SELECT ${MODEL_COLUMNS} FROM base_models WHERE state != 'missing' ORDER BY key`,
      ),
      model: db.prepare(`SELECT ${MODEL_COLUMNS} FROM base_models WHERE key = ?`),
      setEnabled: db.prepare('UPDATE base_models SET enabled = ? WHERE key = ?'),
      setDisplayName: db.prepare('UPDATE base_models SET display_name = ? WHERE key = ?'),
      resetDisplayName: db.prepare(
        'UPDATE base_models SET display_name = detected_name WHERE key = ?',
      ),
      insertRequest: db.prepare(
        "INSERT INTO training_requests (payload, status, source) VALUES (?, 'pending', 'database')",
      ),
      request: db.prepare(
        `SELECT id, status, error, problems, run_id, duplicate_of, request_key, created_at,
                decided_at
           FROM training_requests WHERE id = ?`,
      ),
      runByPk: db.prepare(`SELECT ${RUN_COLUMNS} FROM runs WHERE id = ?`),
      run: db.prepare(`SELECT ${RUN_COLUMNS} FROM runs WHERE run_id = ?`),
      trainings: db.prepare(
        `SELECT model_key, position, state, epochs_done, train_losses, val_losses, weight, steps,
                tokens, seconds, started_at, finished_at
           FROM model_trainings WHERE run_id = ? ORDER BY position`,
      ),
      cancel: db.prepare(
        `UPDATE runs SET cancel_requested = 1
          WHERE run_id = ? AND state IN ('queued', 'running')`,
      ),
      runState: db.prepare('SELECT state FROM runs WHERE run_id = ?').pluck(),
      insertDownload: db.prepare(
        `INSERT INTO model_downloads (repository, revision, folder, allow_pickle, host, status,
                                      source)
         VALUES (?, ?, ?, ?, ?, 'pending', 'database')`,
      ),
      download: db.prepare(`SELECT ${DOWNLOAD_COLUMNS} FROM model_downloads WHERE id = ?`),
      downloads: db.prepare(`SELECT ${DOWNLOAD_COLUMNS} FROM model_downloads ORDER BY id`),
      activeDownloads: db.prepare(
        `SELECT ${DOWNLOAD_COLUMNS} FROM model_downloads
          WHERE status IN ('pending', 'running') ORDER BY id`,
      ),
      downloadedModel: db.prepare(
        `SELECT ${MODEL_COLUMNS} FROM base_models WHERE key = ? AND host = ?`,
      ),
      cancelDownload: db.prepare(
        `UPDATE model_downloads SET cancel_requested = 1
          WHERE id = ? AND status IN ('pending', 'running')`,
      ),
      downloadStatus: db.prepare('SELECT status FROM model_downloads WHERE id = ?').pluck(),
    };
  }

  _db() {
    if (!this.db.open) throw new Error(`the database ${this.dbPath} is closed`);
    return this.db;
  }

  _model(key) {
    const row = this.sql.model.get(key);
    if (row === undefined) {
      throw new Error(`unknown model key "${key}": no such row in base_models (see listModels())`);
    }
    return modelOf(row);
  }

  /** The catalog, by key. Models that are gone (state 'missing') only with includeMissing. */
  listModels({ includeMissing = false } = {}) {
    this._db();
    const stmt = includeMissing ? this.sql.models : this.sql.presentModels;
    return stmt.all().map(modelOf);
  }

  /** One catalog row; an unknown key is an Error naming it. */
  model(key) {
    checkKey(key);
    this._db();
    return this._model(key);
  }

  /** Enables or disables a model for training; returns the updated row. */
  setEnabled(key, enabled) {
    checkKey(key);
    if (typeof enabled !== 'boolean') {
      throw new TypeError(`setEnabled(${JSON.stringify(key)}, ...): enabled is true or false`);
    }
    this._db();
    if (this.sql.setEnabled.run(enabled ? 1 : 0, key).changes === 0) this._model(key);
    return this._model(key);
  }

  /**
   * Sets the name shown for a model; it survives every catalog scan. null puts back the
   * detected name (from config.json), which then follows the model's config again.
   */
  setDisplayName(key, name) {
    checkKey(key);
    if (name !== null) {
      if (typeof name !== 'string' || name.trim() === '') {
        throw new TypeError(
          `setDisplayName(${JSON.stringify(key)}, ...): the name is a non-empty string, or null ` +
            'to use the detected name',
        );
      }
      name = name.trim();
      if (name.length > MAX_DISPLAY_NAME) {
        throw new RangeError(`a display name is at most ${MAX_DISPLAY_NAME} characters`);
      }
    }
    this._db();
    const info =
      name === null
        ? this.sql.resetDisplayName.run(key)
        : this.sql.setDisplayName.run(name, key);
    if (info.changes === 0) this._model(key);
    return this._model(key);
  }

  /**
   * Queues a training request (CONTRACT.md section 4) as a 'pending' row; returns the row id.
   * The daemon validates it like a dropped file and writes the verdict within about a second:
   * follow it with requestStatus(id). A string is taken as the JSON text itself.
   */
  requestTraining(request) {
    let payload;
    if (typeof request === 'string') {
      payload = request;
    } else if (request !== null && typeof request === 'object' && !Array.isArray(request)) {
      payload = JSON.stringify(request);
    } else {
      throw new TypeError('requestTraining(request): a request is an object (or its JSON text)');
    }
    this._db();
    return Number(this.sql.insertRequest.run(payload).lastInsertRowid);
  }

  /**
   * The verdict on a request: status ('pending' until the daemon decides, then 'queued',
   * 'rejected' or 'duplicate'), error (the problems, one per line), problems (a list), and for
   * a queued request its run (run_id, state, outcome, progress, error, ...).
   */
  requestStatus(id) {
    if (!Number.isInteger(id) || id < 1) {
      throw new TypeError(`a request id is a positive integer, got ${String(id)}`);
    }
    this._db();
    const row = this.sql.request.get(id);
    if (row === undefined) throw new Error(`no training request #${id}`);
    let run = null;
    if (row.run_id !== null) {
      const r = this.sql.runByPk.get(row.run_id);
      if (r !== undefined) run = runOf(r);
    }
    return {
      id: row.id,
      status: row.status,
      error: row.error,
      problems: parseJson(row.problems) || [],
      request_id: row.request_key,
      duplicate_of: row.duplicate_of,
      created_at: row.created_at,
      decided_at: row.decided_at,
      run,
    };
  }

  /** One run by its run_id, with each model's training (losses per epoch, weight). */
  run(runId) {
    checkRunId(runId);
    this._db();
    const row = this.sql.run.get(runId);
    if (row === undefined) throw new Error(`unknown run "${runId}"`);
    const models = this.sql.trainings.all(row.id).map((t) => ({
      ...t,
      train_losses: parseJson(t.train_losses),
      val_losses: parseJson(t.val_losses),
    }));
    return { ...runOf(row), models };
  }

  /**
   * The run's live_metrics.json in the seed's shape ({type: 'epoch_end', epoch, total_epochs,
   * total_loss, val_losses, weights, progress_percent, ...}, one number per model key):
   * HOME/models/oneseek-certified/<run_id>/ holds it while the run trains and, once it is
   * certified, links to the certified folder's final copy; null before the first write.
   */
  liveMetrics(runId) {
    checkRunId(runId);
    this._db();
    if (this.sql.runState.get(runId) === undefined) throw new Error(`unknown run "${runId}"`);
    const candidates = [
      path.join(this.home, 'models', 'oneseek-certified', runId, 'live_metrics.json'),
    ];
    for (const file of candidates) {
      let text;
      try {
        text = fs.readFileSync(file, 'utf8');
      } catch (err) {
        if (err.code === 'ENOENT') continue;
        throw err;
      }
      return JSON.parse(text); // written whole (temp file + rename), never half
    }
    return null;
  }

  /**
   * Asks the daemon to cancel a queued or running run (cancel_requested = 1): a queued run is
   * cancelled at once, a running one stops at its next step. A run that already ended is an
   * Error saying so. Returns { run_id, state } as the run stood when asked.
   */
  cancel(runId) {
    checkRunId(runId);
    this._db();
    if (this.sql.cancel.run(runId).changes === 0) {
      const state = this.sql.runState.get(runId);
      if (state === undefined) throw new Error(`unknown run "${runId}"`);
      throw new Error(`run ${runId} already ended (${state}); nothing to cancel`);
    }
    return { run_id: runId, state: this.sql.runState.get(runId), cancel_requested: true };
  }

  /**
   * Asks the daemon to download a base model from the Hugging Face Hub (or the mirror its
   * HF_ENDPOINT / [hub] endpoint names): INSERTs a 'pending' model_downloads row and returns
   * its id. `repository` is ORG/NAME, or ORG/NAME@REVISION; options: revision (a branch, tag
   * or commit; default main), folder (under base_models/; default the repository's name),
   * allowPickle (fetch *.bin / *.pt weights of a repository without safetensors), host (the
   * host whose daemon downloads it; default the first daemon to look). The daemon checks the
   * names and fails the row with the reason when they are wrong: follow it with download(id).
   */
  pullModel(repository, { revision, folder, allowPickle = false, host } = {}) {
    if (typeof repository !== 'string' || repository.trim() === '') {
      throw new TypeError('pullModel(repository): a repository is "ORG/NAME" or "ORG/NAME@REV"');
    }
    let repo = repository.trim();
    const at = repo.indexOf('@');
    if (at >= 0) {
      if (revision !== undefined) {
        throw new TypeError(
          `pullModel(${JSON.stringify(repository)}, { revision }): give the revision once, ` +
            'after the @ or as the option',
        );
      }
      revision = repo.slice(at + 1);
      repo = repo.slice(0, at);
    }
    for (const [name, value] of Object.entries({ revision, folder, host })) {
      if (value !== undefined && value !== null && (typeof value !== 'string' || value === '')) {
        throw new TypeError(`pullModel(..., { ${name} }): a non-empty string, if given`);
      }
    }
    if (typeof allowPickle !== 'boolean') {
      throw new TypeError('pullModel(..., { allowPickle }): true or false');
    }
    this._db();
    const info = this.sql.insertDownload.run(
      repo,
      revision || 'main',
      folder || null,
      allowPickle ? 1 : 0,
      host || null,
    );
    return Number(info.lastInsertRowid);
  }

  /**
   * One download: status ('pending' until a daemon claims it, within about a second, then
   * 'running', and 'succeeded', 'failed' or 'cancelled'), bytes_done of bytes_total, progress
   * ({ rate: bytes/s, eta_s, file, fetched_bytes }, written about once a second), commit (the
   * revision pinned before the first byte), error and problems, and once it succeeded
   * model_key and model: the catalog row of the installed folder.
   */
  download(id) {
    checkDownloadId(id);
    this._db();
    const row = this.sql.download.get(id);
    if (row === undefined) throw new Error(`no model download #${id}`);
    const out = downloadOf(row);
    out.model = null;
    if (row.model_key !== null && row.host !== null) {
      const model = this.sql.downloadedModel.get(row.model_key, row.host);
      if (model !== undefined) out.model = modelOf(model);
    }
    return out;
  }

  /** Every download by id (only pending and running ones with active: true). */
  listDownloads({ active = false } = {}) {
    this._db();
    const stmt = active ? this.sql.activeDownloads : this.sql.downloads;
    return stmt.all().map(downloadOf);
  }

  /**
   * Asks the daemon to cancel a pending or running download (cancel_requested = 1): a pending
   * one is cancelled when claimed, a running one stops at its next bytes, keeping what arrived
   * for a later pull. A download that already ended is an Error saying so.
   */
  cancelDownload(id) {
    checkDownloadId(id);
    this._db();
    if (this.sql.cancelDownload.run(id).changes === 0) {
      const status = this.sql.downloadStatus.get(id);
      if (status === undefined) throw new Error(`no model download #${id}`);
      throw new Error(`download #${id} already ended (${status}); nothing to cancel`);
    }
    return { id, status: this.sql.downloadStatus.get(id), cancel_requested: true };
  }

  close() {
    if (this.db.open) this.db.close();
  }
}

// --- the module-level API: one open home at a time ---------------------------------------------
let current = null;

function admin() {
  if (current === null) throw new Error('oneseekd admin: not open; call open(HOME) first');
  return current;
}

function open(home) {
  const next = new Admin(home);
  if (current !== null) current.close();
  current = next;
  return next;
}

function close() {
  if (current !== null) {
    current.close();
    current = null;
  }
}

module.exports = {
  Admin,
  BUSY_TIMEOUT_MS,
  open,
  close,
  listModels: (options) => admin().listModels(options),
  model: (key) => admin().model(key),
  setEnabled: (key, enabled) => admin().setEnabled(key, enabled),
  setDisplayName: (key, name) => admin().setDisplayName(key, name),
  requestTraining: (request) => admin().requestTraining(request),
  requestStatus: (id) => admin().requestStatus(id),
  run: (runId) => admin().run(runId),
  liveMetrics: (runId) => admin().liveMetrics(runId),
  cancel: (runId) => admin().cancel(runId),
  pullModel: (repository, options) => admin().pullModel(repository, options),
  download: (id) => admin().download(id),
  listDownloads: (options) => admin().listDownloads(options),
  cancelDownload: (id) => admin().cancelDownload(id),
};
