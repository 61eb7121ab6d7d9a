/*
 * worker.c
 *	  A persistent worker for "atomizer work --persistent" in C, no shell and
 *	  no library: one JSON line per job on stdin, one JSON answer per job on
 *	  stdout.  This one does nothing and succeeds (the benchmark's no-op
 *	  worker); put the work in do_job().
 *
 *	  cc -O2 -o worker examples/worker.c
 *	  atomizer work --dsn "dbname=app" --queue images --persistent \
 *	                --concurrency 2 --pipeline 64 -- ./worker
 *
 *	  atomizer writes each job as one line that starts with its id:
 *	  {"id":42,"task":"...","attempt":1,"queue":"...","payload":{...}}
 *	  Answer {"id":42,"ok":true}, with "result": a JSON value if there is
 *	  one, or {"id":42,"error":"what went wrong"} (add "retry":false for a
 *	  failure that can never succeed, "retry_in":SECONDS for a delay).
 *	  Log to stderr: stdout is for answers.  End of stdin means "exit".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The work of one job; line is its JSON.  0 on success. */
static int
do_job(const char *line)
{
	(void) line;
	return 0;
}

/* Write all of buf to stdout; 0, or -1 if atomizer is gone. */
static int
write_all(const char *buf, size_t len)
{
	while (len > 0)
	{
		ssize_t		n = write(1, buf, len);

		if (n <= 0)
			return -1;
		buf += n;
		len -= n;
	}
	return 0;
}

int
main(void)
{
	size_t		cap = 65536;
	size_t		have = 0;
	char	   *in = malloc(cap);
	char	   *out = malloc(cap);

	for (;;)
	{
		ssize_t		n;
		char	   *start = in;
		char	   *nl;
		size_t		olen = 0;

		if (have == cap)		/* a line longer than the buffer: grow it */
		{
			cap *= 2;
			in = realloc(in, cap);
			out = realloc(out, cap);
		}
		n = read(0, in + have, cap - have);
		if (n <= 0)
			break;				/* end of input: exit */
		have += n;

		/*
		 * Every whole line read is a job; their answers go out in one
		 * write (an answer is at most 64 bytes here, a line at least 40).
		 */
		while ((nl = memchr(start, '\n', in + have - start)) != NULL)
		{
			const char *p;
			long long	id;

			*nl = '\0';
			p = strstr(start, "\"id\":");
			id = p ? strtoll(p + 5, NULL, 10) : 0;
			if (do_job(start) == 0)
				olen += sprintf(out + olen, "{\"id\":%lld,\"ok\":true}\n", id);
			else
				olen += sprintf(out + olen, "{\"id\":%lld,\"error\":\"do_job failed\"}\n", id);
			start = nl + 1;
		}
		if (write_all(out, olen) < 0)
			break;
		have -= start - in;
		memmove(in, start, have);
	}
	return 0;
}
