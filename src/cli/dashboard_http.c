/*-------------------------------------------------------------------------
 *
 * dashboard_http.c
 *	  The dashboard's HTTP side (libmicrohttpd): who the visitor is (HTTP
 *	  basic authentication as a PostgreSQL role, or the DSN's role), one
 *	  libpq connection per role, sessions and their CSRF tokens, the checks
 *	  every state-changing request passes, the page's static files, and
 *	  the headers of every answer.
 *
 *	  libmicrohttpd gives each HTTP connection its own thread, so that the
 *	  live-update streams (GET /api/events, dashboard_events.c), which stay
 *	  open, never hold up other requests.  Every other request is answered
 *	  under one mutex (request_lock): the connection pool and the session
 *	  table are used by one request at a time, and a query holds up the
 *	  others for its duration (they are short and bounded).  A stream holds
 *	  the mutex only while it checks the login, not while it streams.
 *
 *	  A state-changing request (POST) passes, in this order: the dashboard
 *	  is not --read-only (else 403); its Origin, or failing that its
 *	  Referer, is this dashboard's own origin (http(s)://Host) (else 403);
 *	  its X-CSRF-Token header is the token of the visitor's session, which
 *	  GET /api/session hands out to the page and a cross-site page cannot
 *	  read (else 403).  The session is an HttpOnly, SameSite=Strict cookie
 *	  bound to the role it was made for.
 *
 *	  src/cli/dashboard_http.c
 *
 *-------------------------------------------------------------------------
 */
#include "dashboard.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_ROLES 64
#define MAX_SESSIONS 1024
#define TOKEN_LEN 32			/* hex characters */
#define SESSION_COOKIE "atomizer_session"

/* one logged-in role's connection */
typedef struct RoleConn
{
	char	   *user;			/* NULL: the DSN's own role (no login) */
	char	   *password;
	PGconn	   *conn;
	time_t		used;
} RoleConn;

typedef struct Session
{
	char		id[TOKEN_LEN + 1];
	char		csrf[TOKEN_LEN + 1];
	char	   *user;			/* the role it was made for */
	time_t		used;
} Session;

static RoleConn roles[MAX_ROLES];
static Session sessions[MAX_SESSIONS];
static pthread_mutex_t request_lock = PTHREAD_MUTEX_INITIALIZER;

/* Fill buf with TOKEN_LEN random hex characters and a NUL. */
static void
random_token(char *buf)
{
	unsigned char raw[TOKEN_LEN / 2];
	int			fd = open("/dev/urandom", O_RDONLY);
	int			i;

	if (fd < 0 || read(fd, raw, sizeof(raw)) != (ssize_t) sizeof(raw))
	{
		logmsg("could not read /dev/urandom: %m");
		exit(1);
	}
	close(fd);
	for (i = 0; i < (int) sizeof(raw); i++)
		sprintf(buf + 2 * i, "%02x", raw[i]);
	buf[TOKEN_LEN] = '\0';
}

/* Compare two strings in time that does not depend on where they differ. */
static bool
same_secret(const char *a, const char *b)
{
	size_t		la = strlen(a),
				lb = strlen(b),
				i;
	unsigned char diff = (la != lb);

	for (i = 0; i < la && i < lb; i++)
		diff |= (unsigned char) (a[i] ^ b[i]);
	return diff == 0;
}

/* Append s to b as a JSON string literal (quotes included). */
void
json_escape(Buf *b, const char *s)
{
	buf_append(b, "\"", 1);
	for (; s && *s; s++)
	{
		unsigned char ch = (unsigned char) *s;

		if (ch == '"' || ch == '\\')
		{
			buf_append(b, "\\", 1);
			buf_append(b, s, 1);
		}
		else if (ch < 0x20 || ch == '<' || ch == '>' || ch == '&')
			buf_appendf(b, "\\u%04x", ch);
		else
			buf_append(b, s, 1);
	}
	buf_append(b, "\"", 1);
}

/*
 * The connection of a role: the DSN's (user == NULL), or a login's, made
 * with the visitor's name and password (a wrong password fails here, as
 * PostgreSQL's authentication decides).  NULL with err set on failure.
 */
static PGconn *
role_conn(const char *user, const char *password, char *err, size_t errlen)
{
	RoleConn   *slot = NULL,
			   *oldest = &roles[0];
	int			i;

	for (i = 0; i < MAX_ROLES; i++)
	{
		RoleConn   *r = &roles[i];

		if (r->conn != NULL &&
			((user == NULL && r->user == NULL) ||
			 (user != NULL && r->user != NULL && strcmp(r->user, user) == 0)))
		{
			if (user != NULL && !same_secret(r->password, password))
				break;			/* another password: log in again */
			if (PQstatus(r->conn) != CONNECTION_OK)
				PQreset(r->conn);
			if (PQstatus(r->conn) != CONNECTION_OK)
				break;
			r->used = time(NULL);
			return r->conn;
		}
	}

	/* a new login: connect with the DSN, then the visitor's name */
	if (user != NULL)
	{
		const char *keys[] = {"dbname", "user", "password", "application_name",
		"client_encoding", NULL};
		const char *vals[] = {dashboard_config.dsn, user, password,
		"atomizer dashboard", "UTF8", NULL};
		int			first = dashboard_config.dsn ? 0 : 1;	/* no DSN: environment */
		PGconn	   *c;

		c = PQconnectdbParams(keys + first, vals + first, 1);
		if (c == NULL || PQstatus(c) != CONNECTION_OK)
		{
			oneline(c ? PQerrorMessage(c) : "out of memory", err, errlen);
			PQfinish(c);
			return NULL;
		}
		/* replace this role's old connection, or the least recently used */
		for (i = 0; i < MAX_ROLES; i++)
		{
			if (roles[i].conn == NULL || (roles[i].user && strcmp(roles[i].user, user) == 0))
			{
				slot = &roles[i];
				break;
			}
			if (roles[i].used < oldest->used)
				oldest = &roles[i];
		}
		if (slot == NULL)
			slot = oldest;
		PQfinish(slot->conn);
		free(slot->user);
		free(slot->password);
		slot->user = xstrdup(user);
		slot->password = xstrdup(password);
		slot->conn = c;
		slot->used = time(NULL);
		return c;
	}

	/* no login: the DSN's role, in slot 0 (logins never use it) */
	slot = &roles[0];
	if (slot->conn == NULL)
	{
		slot->conn = connect_db(dashboard_config.dsn, "atomizer dashboard", err, errlen);
		if (slot->conn == NULL)
			return NULL;
	}
	else
	{
		PQreset(slot->conn);
		if (PQstatus(slot->conn) != CONNECTION_OK)
		{
			oneline(PQerrorMessage(slot->conn), err, errlen);
			return NULL;
		}
	}
	slot->used = time(NULL);
	return slot->conn;
}

/* The session named by the request's cookie, if it is this role's. */
static Session *
find_session(struct MHD_Connection *conn, const char *user)
{
	const char *id = MHD_lookup_connection_value(conn, MHD_COOKIE_KIND,
												 SESSION_COOKIE);
	int			i;

	if (id == NULL)
		return NULL;
	for (i = 0; i < MAX_SESSIONS; i++)
	{
		Session    *s = &sessions[i];

		if (s->user != NULL && same_secret(s->id, id) &&
			strcmp(s->user, user) == 0)
		{
			s->used = time(NULL);
			return s;
		}
	}
	return NULL;
}

/* A new session for user (the least recently used one makes room). */
static Session *
new_session(const char *user)
{
	Session    *s = &sessions[0];
	int			i;

	for (i = 0; i < MAX_SESSIONS; i++)
	{
		if (sessions[i].user == NULL)
		{
			s = &sessions[i];
			break;
		}
		if (sessions[i].used < s->used)
			s = &sessions[i];
	}
	free(s->user);
	s->user = xstrdup(user);
	random_token(s->id);
	random_token(s->csrf);
	s->used = time(NULL);
	return s;
}

/*
 * Is the request from this dashboard's own page?  Its Origin (or, without
 * one, its Referer) must be http://HOST or https://HOST with HOST the Host
 * header the browser sent (behind a reverse proxy: the proxy must pass
 * Host on).  A request with neither header is refused.
 */
static bool
same_origin(struct MHD_Connection *conn)
{
	const char *host = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Host");
	const char *origin = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin");
	const char *referer = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Referer");
	const char *from = origin ? origin : referer;
	const char *rest;
	size_t		hl;

	if (host == NULL || from == NULL)
		return false;
	if (strncmp(from, "http://", 7) == 0)
		rest = from + 7;
	else if (strncmp(from, "https://", 8) == 0)
		rest = from + 8;
	else
		return false;
	hl = strlen(host);
	if (strncmp(rest, host, hl) != 0)
		return false;
	/* Origin ends after the host; a Referer goes on with a path */
	return rest[hl] == '\0' || (origin == NULL && rest[hl] == '/');
}

static void add_headers(struct MHD_Response *resp, const char *type,
						Session *set_cookie);

/* Queue an answer with the headers every answer has. */
static enum MHD_Result
send_answer(struct MHD_Connection *conn, int status, const char *type,
			const void *data, size_t len, bool copy, Session *set_cookie,
			bool ask_login)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	resp = MHD_create_response_from_buffer(len, (void *) data,
										   copy ? MHD_RESPMEM_MUST_COPY : MHD_RESPMEM_PERSISTENT);
	add_headers(resp, type, set_cookie);
	if (ask_login)
		MHD_add_response_header(resp, "WWW-Authenticate",
								"Basic realm=\"atomizer\", charset=\"UTF-8\"");
	ret = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/* The headers every answer has (and the session's cookie, if new). */
static void
add_headers(struct MHD_Response *resp, const char *type, Session *set_cookie)
{
	MHD_add_response_header(resp, "Content-Type", type);
	MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
	MHD_add_response_header(resp, "X-Frame-Options", "DENY");
	MHD_add_response_header(resp, "Referrer-Policy", "same-origin");
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	MHD_add_response_header(resp, "Content-Security-Policy",
							"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'");
	if (set_cookie != NULL)
	{
		char		cookie[128];

		snprintf(cookie, sizeof(cookie),
				 SESSION_COOKIE "=%s; Path=/; HttpOnly; SameSite=Strict",
				 set_cookie->id);
		MHD_add_response_header(resp, "Set-Cookie", cookie);
	}
}

static enum MHD_Result
send_error(struct MHD_Connection *conn, int status, const char *msg,
		   bool ask_login)
{
	Buf			b = {0};
	enum MHD_Result ret;

	buf_append(&b, "{\"error\": ", 10);
	json_escape(&b, msg);
	buf_append(&b, "}\n", 2);
	ret = send_answer(conn, status, "application/json; charset=utf-8",
					  b.data, b.len, true, NULL, ask_login);
	buf_free(&b);
	return ret;
}

/* The static file for url ("/" is the page), or NULL. */
static const DashboardAsset *
find_asset(const char *url)
{
	const DashboardAsset *a;

	if (strcmp(url, "/") == 0)
		url = "/index.html";
	for (a = dashboard_assets; a->path != NULL; a++)
		if (strcmp(a->path, url) == 0)
			return a;
	return NULL;
}

/* GET /api/session: the role, whether it may act, and the CSRF token */
static void
answer_session(DashRequest *r, Session *s)
{
	PGresult   *res = PQexec(r->db, DASHBOARD_SQL_WHOAMI);

	if (PQresultStatus(res) != PGRES_TUPLES_OK)
	{
		dashboard_error(r, 500, "%s", PQresultErrorMessage(res));
		PQclear(res);
		return;
	}
	buf_appendf(&r->body, "{\"who\": %s, \"read_only\": %s, \"login\": %s, \"csrf\": ",
				PQgetvalue(res, 0, 0),
				dashboard_config.read_only ? "true" : "false",
				dashboard_config.login ? "true" : "false");
	json_escape(&r->body, s->csrf);
	buf_appendf(&r->body, ", \"version\": \"%s\"}\n", ATOMIZER_VERSION);
	r->status = 200;
	PQclear(res);
}

/* GET /api/events: the visitor's live-update stream */
static enum MHD_Result
send_events(struct MHD_Connection *conn, const char *user,
			const char *password, Session *set_cookie)
{
	struct MHD_Response *resp = dashboard_events_response(user, password);
	enum MHD_Result ret;

	if (resp == NULL)
		return send_error(conn, 503, "could not open the event stream", false);
	add_headers(resp, "text/event-stream; charset=utf-8", set_cookie);
	/* a reverse proxy (nginx) must pass each event on at once */
	MHD_add_response_header(resp, "X-Accel-Buffering", "no");
	ret = MHD_queue_response(conn, 200, resp);
	MHD_destroy_response(resp);
	return ret;
}

static enum MHD_Result handle_locked(struct MHD_Connection *conn,
									 const char *url, const char *method);

/*
 * libmicrohttpd's handler of every request, in the connection's thread:
 * skip the body, then answer under request_lock.
 */
static enum MHD_Result
handle(void *cls, struct MHD_Connection *conn, const char *url,
	   const char *method, const char *version, const char *upload_data,
	   size_t *upload_data_size, void **con_cls)
{
	static int	first_call;
	enum MHD_Result ret;

	/* the first call has only the headers; a body is read and ignored */
	if (*con_cls == NULL)
	{
		*con_cls = &first_call;
		return MHD_YES;
	}
	if (*upload_data_size != 0)
	{
		*upload_data_size = 0;
		return MHD_YES;
	}
	pthread_mutex_lock(&request_lock);
	ret = handle_locked(conn, url, method);
	pthread_mutex_unlock(&request_lock);
	(void) cls;
	(void) version;
	(void) upload_data;
	return ret;
}

/* Answer one request (request_lock held). */
static enum MHD_Result
handle_locked(struct MHD_Connection *conn, const char *url, const char *method)
{
	const DashboardAsset *asset;
	char	   *user = NULL;
	char	   *password = NULL;
	const char *role;
	char		err[1024];
	Session    *session;
	bool		fresh = false;
	bool		post;
	bool		writes = false;
	DashRequest r;
	enum MHD_Result ret;

	post = strcmp(method, "POST") == 0;
	if (!post && strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return send_error(conn, 405, "only GET and POST", false);

	/* who is it: every request, the page's files included, needs a login */
	if (dashboard_config.login)
	{
		user = MHD_basic_auth_get_username_password(conn, &password);
		if (user == NULL || password == NULL || user[0] == '\0')
		{
			MHD_free(user);
			MHD_free(password);
			return send_error(conn, 401, "log in with your PostgreSQL role's name and password", true);
		}
	}
	r.conn = conn;
	r.method = method;
	r.url = url;
	r.status = 200;
	r.content_type = "application/json; charset=utf-8";
	memset(&r.body, 0, sizeof(r.body));
	r.db = role_conn(user, password, err, sizeof(err));
	if (r.db == NULL)
	{
		ret = dashboard_config.login ?
			send_error(conn, 401, "login failed: the role name or password was not accepted by PostgreSQL", true) :
			send_error(conn, 503, err, false);
		if (dashboard_config.login)
			logmsg("dashboard: login as \"%s\" failed: %s", user, err);
		MHD_free(user);
		MHD_free(password);
		return ret;
	}
	role = user ? user : PQuser(r.db);
	session = find_session(conn, role);
	if (session == NULL)
	{
		session = new_session(role);
		fresh = true;
	}

	asset = find_asset(url);
	if (asset != NULL && !post)
	{
		ret = send_answer(conn, 200, asset->type, asset->data, asset->len,
						  false, fresh ? session : NULL, false);
		goto done;
	}

	if (post)
	{
		const char *token = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
														"X-CSRF-Token");

		if (dashboard_config.read_only)
		{
			ret = send_error(conn, 403, "this dashboard is read-only (--read-only): actions are refused", false);
			goto done;
		}
		if (!same_origin(conn))
		{
			ret = send_error(conn, 403, "cross-origin request refused: the Origin (or Referer) header must be this dashboard's own address", false);
			goto done;
		}
		if (fresh || token == NULL || !same_secret(token, session->csrf))
		{
			ret = send_error(conn, 403, "missing or wrong X-CSRF-Token: get the session's token from GET /api/session (with its cookie)", false);
			goto done;
		}
	}

	if (strcmp(url, "/api/events") == 0 && !post)
	{
		ret = send_events(conn, user, password, fresh ? session : NULL);
		goto done;
	}
	if (strcmp(url, "/api/session") == 0 && !post)
		answer_session(&r, session);
	else if (!dashboard_api_route(&r, &writes))
		dashboard_error(&r, 404, "no such page or endpoint: %s", url);
	else if (writes != post)
		dashboard_error(&r, 405, "%s needs %s", url, writes ? "POST" : "GET");
	else
	{
		dashboard_api_answer(&r);
		/* an action that succeeded: every stream's page reads again */
		if (post && r.status < 300)
			dashboard_events_publish(NULL);
	}

	ret = send_answer(conn, r.status, r.content_type, r.body.data ? r.body.data : "",
					  r.body.len, true, fresh ? session : NULL, false);
	buf_free(&r.body);
done:
	MHD_free(user);
	MHD_free(password);
	return ret;
}

/*
 * Start the daemon on addr: a thread per connection (an open event stream
 * waits in its own), and the live-update feed.
 */
struct MHD_Daemon *
dashboard_http_start(const struct sockaddr *addr, bool ipv6)
{
	dashboard_events_start();
	return MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD |
							MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ERROR_LOG |
							(ipv6 ? MHD_USE_IPv6 : 0),
							0, NULL, NULL, handle, NULL,
							MHD_OPTION_SOCK_ADDR, addr,
							MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int) 60,
							MHD_OPTION_CONNECTION_LIMIT, (unsigned int) 256,
							MHD_OPTION_END);
}
