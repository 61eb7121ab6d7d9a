/*-------------------------------------------------------------------------
 *
 * dashboard.c
 *	  "atomizer dashboard": its options, the rule for where it may listen,
 *	  and its life (start the HTTP daemon, wait for SIGTERM or SIGINT,
 *	  stop).
 *
 *	  Who a visitor is: with a --dsn that names no user, HTTP basic
 *	  authentication, and the name and password log in to PostgreSQL as
 *	  the visitor's own role (row-level security decides what each one
 *	  sees).  With user=... in the DSN every visitor acts as that role
 *	  without a login: allowed only on a loopback address.  A non-loopback
 *	  address is therefore never served without authentication.
 *
 *	  src/cli/dashboard.c
 *
 *-------------------------------------------------------------------------
 */
#include "dashboard.h"

#include <arpa/inet.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

DashboardConfig dashboard_config;

/* Does the DSN name a user?  (keyword "user", or a URI's user part) */
static bool
dsn_names_user(const char *dsn, char **user)
{
	PQconninfoOption *opts,
			   *o;
	char	   *err = NULL;
	bool		found = false;

	*user = NULL;
	if (dsn == NULL)
		return false;
	opts = PQconninfoParse(dsn, &err);
	if (opts == NULL)
		usage_error("dashboard ", "invalid --dsn: %s", err ? err : "out of memory");
	for (o = opts; o->keyword != NULL; o++)
	{
		if (strcmp(o->keyword, "user") == 0 && o->val != NULL && o->val[0] != '\0')
		{
			*user = xstrdup(o->val);
			found = true;
		}
	}
	PQconninfoFree(opts);
	return found;
}

/*
 * Parse HOST:PORT ("127.0.0.1:8080", "[::1]:8080", "localhost:8080") into
 * a socket address.  Only numeric addresses and "localhost": a name that
 * resolves differently tomorrow must not move the dashboard off loopback.
 */
static void
parse_listen(const char *listen, struct sockaddr_storage *ss, bool *ipv6,
			 bool *loopback)
{
	char		host[256];
	const char *colon;
	const char *port;
	size_t		hlen;
	int			p;
	char	   *end;

	memset(ss, 0, sizeof(*ss));
	if (listen[0] == '[')
	{
		const char *close = strchr(listen, ']');

		if (close == NULL || close[1] != ':')
			usage_error("dashboard ", "invalid --listen \"%s\": use HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080", listen);
		hlen = close - listen - 1;
		if (hlen >= sizeof(host))
			usage_error("dashboard ", "invalid --listen \"%s\"", listen);
		memcpy(host, listen + 1, hlen);
		host[hlen] = '\0';
		port = close + 2;
	}
	else
	{
		colon = strrchr(listen, ':');
		if (colon == NULL || strchr(listen, ':') != colon)
			usage_error("dashboard ", "invalid --listen \"%s\": use HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080", listen);
		hlen = colon - listen;
		if (hlen >= sizeof(host))
			usage_error("dashboard ", "invalid --listen \"%s\"", listen);
		memcpy(host, listen, hlen);
		host[hlen] = '\0';
		port = colon + 1;
	}
	p = (int) strtol(port, &end, 10);
	if (*port == '\0' || *end != '\0' || p < 0 || p > 65535)
		usage_error("dashboard ", "invalid port in --listen \"%s\": a number from 0 to 65535", listen);
	if (strcmp(host, "localhost") == 0)
		strcpy(host, "127.0.0.1");

	if (strchr(host, ':') != NULL)
	{
		struct sockaddr_in6 *a = (struct sockaddr_in6 *) ss;

		if (inet_pton(AF_INET6, host, &a->sin6_addr) != 1)
			usage_error("dashboard ", "invalid address \"%s\" in --listen: a numeric IPv4 or IPv6 address, or localhost", host);
		a->sin6_family = AF_INET6;
		a->sin6_port = htons(p);
		*ipv6 = true;
		*loopback = IN6_IS_ADDR_LOOPBACK(&a->sin6_addr) ||
			(IN6_IS_ADDR_V4MAPPED(&a->sin6_addr) && a->sin6_addr.s6_addr[12] == 127);
	}
	else
	{
		struct sockaddr_in *a = (struct sockaddr_in *) ss;

		if (inet_pton(AF_INET, host, &a->sin_addr) != 1)
			usage_error("dashboard ", "invalid address \"%s\" in --listen: a numeric IPv4 or IPv6 address, or localhost", host);
		a->sin_family = AF_INET;
		a->sin_port = htons(p);
		*ipv6 = false;
		*loopback = (ntohl(a->sin_addr.s_addr) >> 24) == 127;
	}
}

int
cmd_dashboard(int argc, char **argv)
{
	static const struct option opts[] = {
		{"dsn", required_argument, NULL, 'd'},
		{"listen", required_argument, NULL, 'l'},
		{"read-only", no_argument, NULL, 'r'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0}
	};
	const char *listen = "127.0.0.1:8080";
	struct sockaddr_storage ss;
	bool		ipv6 = false;
	bool		loopback = false;
	char	   *user;
	struct MHD_Daemon *d;
	const union MHD_DaemonInfo *info;
	sigset_t	sigs;
	int			sig;
	int			c;

	opterr = 0;
	optind = 1;
	dashboard_config.dsn = NULL;
	dashboard_config.read_only = false;
	while ((c = getopt_long(argc, argv, "+:h", opts, NULL)) != -1)
	{
		switch (c)
		{
			case 'd':
				dashboard_config.dsn = optarg;
				break;
			case 'l':
				listen = optarg;
				break;
			case 'r':
				dashboard_config.read_only = true;
				break;
			case 'h':
				return print_help("dashboard");
			case ':':
				usage_error("dashboard ", "option \"%s\" needs a value", argv[optind - 1]);
			default:
				usage_error("dashboard ", "unknown option \"%s\"", argv[optind - 1]);
		}
	}
	if (optind < argc)
		usage_error("dashboard ", "unexpected argument \"%s\"", argv[optind]);

	parse_listen(listen, &ss, &ipv6, &loopback);
	dashboard_config.login = !dsn_names_user(dashboard_config.dsn, &user);
	if (!dashboard_config.login && !loopback)
		usage_error("dashboard ",
					"refusing to listen on %s without authentication: the --dsn names a user (\"%s\"), so every visitor would act as that role; "
					"listen on a loopback address (127.0.0.1, [::1]), or remove user= from the --dsn so that visitors log in as their own roles",
					listen, user);

	/* SIGTERM and SIGINT are taken by sigwait below, never by a thread */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	d = dashboard_http_start((struct sockaddr *) &ss, ipv6);
	if (d == NULL)
	{
		logmsg("could not listen on %s: %m", listen);
		return 1;
	}
	info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
	{
		char		host[INET6_ADDRSTRLEN];

		if (ipv6)
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *) &ss)->sin6_addr, host, sizeof(host));
		else
			inet_ntop(AF_INET, &((struct sockaddr_in *) &ss)->sin_addr, host, sizeof(host));
		logmsg("dashboard listening on http://%s%s%s:%u/ (%s%s)",
			   ipv6 ? "[" : "", host, ipv6 ? "]" : "",
			   info ? (unsigned) info->port : 0,
			   dashboard_config.login ? "visitors log in as their own PostgreSQL roles" : "every visitor acts as role ",
			   dashboard_config.login ? "" : user);
		if (dashboard_config.read_only)
			logmsg("read-only: actions are refused");
	}
	fflush(stderr);

	sigwait(&sigs, &sig);
	logmsg("dashboard stopping (%s)", sig == SIGTERM ? "SIGTERM" : "SIGINT");
	dashboard_events_stop();	/* open streams end, their threads return */
	MHD_stop_daemon(d);
	return 0;
}
