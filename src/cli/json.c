/*-------------------------------------------------------------------------
 *
 * json.c
 *	  A JSON syntax check (RFC 8259) for the atomizer command-line tool, so
 *	  that "atomizer enqueue" refuses a payload that is not JSON itself,
 *	  with the position of the mistake, instead of passing the server's
 *	  "invalid input syntax for type json" on.  It only checks; the server
 *	  parses the text again as jsonb.
 *
 *	  src/cli/json.c
 *
 *-------------------------------------------------------------------------
 */
#include "cli.h"

#include <stdio.h>
#include <string.h>

/* nesting deeper than this is refused (the server's stack has a limit too) */
#define JSON_MAX_DEPTH 1000

typedef struct JsonCheck
{
	const char *start;
	const char *p;
	const char *error;			/* what was wrong, NULL while fine */
} JsonCheck;

static bool json_value(JsonCheck *j, int depth);

static void
json_skip_space(JsonCheck *j)
{
	while (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')
		j->p++;
}

static bool
json_fail(JsonCheck *j, const char *what)
{
	if (j->error == NULL)
		j->error = what;
	return false;
}

/* A string, the opening quote at j->p. */
static bool
json_string(JsonCheck *j)
{
	j->p++;
	for (;;)
	{
		unsigned char c = (unsigned char) *j->p;

		if (c == '\0')
			return json_fail(j, "unterminated string");
		if (c == '"')
		{
			j->p++;
			return true;
		}
		if (c < 0x20)
			return json_fail(j, "control character in a string (escape it)");
		if (c == '\\')
		{
			j->p++;
			if (*j->p == 'u')
			{
				for (int i = 1; i <= 4; i++)
					if (strchr("0123456789abcdefABCDEF", j->p[i]) == NULL ||
						j->p[i] == '\0')
						return json_fail(j, "invalid \\u escape in a string");
				j->p += 5;
				continue;
			}
			if (*j->p == '\0' || strchr("\"\\/bfnrt", *j->p) == NULL)
				return json_fail(j, "invalid escape in a string");
		}
		j->p++;
	}
}

/* A number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static bool
json_number(JsonCheck *j)
{
	const char *p = j->p;

	if (*p == '-')
		p++;
	if (*p == '0')
		p++;
	else if (*p >= '1' && *p <= '9')
		while (*p >= '0' && *p <= '9')
			p++;
	else
		return json_fail(j, "invalid number");
	if (*p == '.')
	{
		p++;
		if (!(*p >= '0' && *p <= '9'))
			return json_fail(j, "invalid number");
		while (*p >= '0' && *p <= '9')
			p++;
	}
	if (*p == 'e' || *p == 'E')
	{
		p++;
		if (*p == '+' || *p == '-')
			p++;
		if (!(*p >= '0' && *p <= '9'))
			return json_fail(j, "invalid number");
		while (*p >= '0' && *p <= '9')
			p++;
	}
	j->p = p;
	return true;
}

static bool
json_literal(JsonCheck *j, const char *word)
{
	size_t		n = strlen(word);

	if (strncmp(j->p, word, n) != 0)
		return json_fail(j, "unexpected character");
	j->p += n;
	return true;
}

/* An object or array, the opening bracket at j->p. */
static bool
json_container(JsonCheck *j, int depth)
{
	char		close = (*j->p == '{') ? '}' : ']';
	bool		object = (close == '}');

	if (depth > JSON_MAX_DEPTH)
		return json_fail(j, "nested too deeply");
	j->p++;
	json_skip_space(j);
	if (*j->p == close)
	{
		j->p++;
		return true;
	}
	for (;;)
	{
		if (object)
		{
			if (*j->p != '"')
				return json_fail(j, "expected a string as object key");
			if (!json_string(j))
				return false;
			json_skip_space(j);
			if (*j->p != ':')
				return json_fail(j, "expected \":\" after an object key");
			j->p++;
		}
		if (!json_value(j, depth + 1))
			return false;
		json_skip_space(j);
		if (*j->p == close)
		{
			j->p++;
			return true;
		}
		if (*j->p != ',')
			return json_fail(j, object ? "expected \",\" or \"}\"" :
							 "expected \",\" or \"]\"");
		j->p++;
		json_skip_space(j);
	}
}

static bool
json_value(JsonCheck *j, int depth)
{
	json_skip_space(j);
	switch (*j->p)
	{
		case '{':
		case '[':
			return json_container(j, depth);
		case '"':
			return json_string(j);
		case 't':
			return json_literal(j, "true");
		case 'f':
			return json_literal(j, "false");
		case 'n':
			return json_literal(j, "null");
		case '\0':
			return json_fail(j, "unexpected end of input");
		default:
			if (*j->p == '-' || (*j->p >= '0' && *j->p <= '9'))
				return json_number(j);
			return json_fail(j, "unexpected character");
	}
}

/*
 * Is text one JSON value?  If not, describe the mistake and where it is in
 * err.  *container says whether the value is an object or an array (what
 * atomizer accepts as a payload).
 */
bool
json_check(const char *text, bool *container, char *err, size_t errlen)
{
	JsonCheck	j = {text, text, NULL};

	json_skip_space(&j);
	*container = (*j.p == '{' || *j.p == '[');
	if (json_value(&j, 0))
	{
		json_skip_space(&j);
		if (*j.p == '\0')
			return true;
		json_fail(&j, "unexpected text after the value");
	}
	if (*j.p == '\0')
		snprintf(err, errlen, "%s at the end of the text", j.error);
	else
		snprintf(err, errlen, "%s at character %d (\"%.10s\")", j.error,
				 (int) (j.p - j.start) + 1, j.p);
	return false;
}

/*
 * The value of member key of the JSON object text, which json_check has
 * passed: *value points at it in text, *len is its length.  False when
 * text is not an object or has no such member (a key is compared as it is
 * written, so a key spelled with escapes does not match).
 */
bool
json_member(const char *text, const char *key, const char **value, size_t *len)
{
	JsonCheck	j = {text, text, NULL};
	size_t		klen = strlen(key);

	json_skip_space(&j);
	if (*j.p != '{')
		return false;
	j.p++;
	for (;;)
	{
		const char *k;
		bool		match;

		json_skip_space(&j);
		if (*j.p != '"')
			return false;
		k = j.p + 1;
		if (!json_string(&j))
			return false;
		match = (size_t) (j.p - 1 - k) == klen && strncmp(k, key, klen) == 0;
		json_skip_space(&j);
		if (*j.p != ':')
			return false;
		j.p++;
		json_skip_space(&j);
		k = j.p;
		if (!json_value(&j, 1))
			return false;
		if (match)
		{
			*value = k;
			*len = j.p - k;
			return true;
		}
		json_skip_space(&j);
		if (*j.p != ',')
			return false;
		j.p++;
	}
}
