/*
 * xcluster-cni host shim: forwards one CNI IPAM call to the xcluster-cni agent over a
 * Unix stream socket and relays the agent's stdout and exit code.
 *
 * Installed as "kube-node" and "node-annotation" (one executable, two names); the plugin
 * type is the basename of argv[0]. Protocol: docs/shim.md ("XCN1", version 1).
 * It validates nothing beyond framing: CNI behaviour lives in the agent.
 *
 * Statically linked, no stdio, no heap: fixed buffers of bounded size only.
 */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define MAX_STDIN (1u << 20)          /* request config: at most 1 MiB */
#define MAX_STDOUT (4u << 20)         /* answer: at most 4 MiB */
#define MAX_ENV_ENTRIES 64u           /* including XCLUSTER_CNI_PLUGIN */
#define MAX_ENV_ENTRY (64u << 10)     /* "NAME=VALUE", at most 64 KiB */
#define MAX_SOCKET_PATH 107u          /* sun_path minus the terminating NUL */
#define DEFAULT_SOCKET "/run/xcluster-cni/ipam.sock"
#define DEFAULT_TIMEOUT_MS 25000L     /* whole exchange, from connect */
#define PLUGIN_VAR "XCLUSTER_CNI_PLUGIN="
#define HINT "is the xcluster-cni DaemonSet running on this node with IPAM_SOCKET set?"

extern char **environ;

static unsigned char in_buf[MAX_STDIN + 1];
static unsigned char out_buf[MAX_STDOUT];
static char sock_path[MAX_SOCKET_PATH + 1];
static long long deadline_ms;

/* ---- output helpers ------------------------------------------------------------ */

static int write_all_fd(int fd, const void *buf, size_t len)
{
	const unsigned char *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* A small fixed-size message builder: text is truncated, never overflows. */
struct msg {
	char buf[2048];
	size_t len;
};

static void put_raw(struct msg *m, const char *s, size_t n)
{
	if (n > sizeof m->buf - m->len)
		n = sizeof m->buf - m->len;
	memcpy(m->buf + m->len, s, n);
	m->len += n;
}

static void put(struct msg *m, const char *s)
{
	put_raw(m, s, strlen(s));
}

static void put_uint(struct msg *m, unsigned long long v)
{
	char tmp[24];
	size_t i = sizeof tmp;
	do {
		tmp[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	put_raw(m, tmp + i, sizeof tmp - i);
}

/* Length of a well-formed UTF-8 sequence at s (at most n bytes), 0 if ill-formed. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	size_t len, i;
	unsigned long cp;
	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2;
		cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		cp = c & 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		cp = c & 0x07;
	} else {
		return 0;
	}
	if (len > n)
		return 0;
	for (i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3f);
	}
	if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
	    (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

/* Appends s as the inside of a JSON string: escapes quotes, backslashes and control
 * characters, keeps well-formed UTF-8, replaces ill-formed bytes with U+FFFD. */
static void put_json(struct msg *m, const char *str)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *s = (const unsigned char *)str;
	size_t n = strlen(str);
	while (n > 0) {
		unsigned char c = *s;
		size_t k = utf8_seq(s, n);
		if (c == '"' || c == '\\') {
			char e[2] = {'\\', (char)c};
			put_raw(m, e, 2);
		} else if (c < 0x20 || c == 0x7f) {
			char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
			put_raw(m, e, 6);
		} else if (k == 0) {
			put(m, "\\ufffd");
			k = 1;
		} else {
			put_raw(m, (const char *)s, k);
		}
		if (k == 0)
			k = 1;
		s += k;
		n -= k;
	}
}

/* Prints one CNI error object on stdout and exits 1. msg_text is already a plain
 * string (it is escaped here). */
static _Noreturn void fail(unsigned code, const char *msg_text, const char *details)
{
	struct msg m = {.len = 0};
	put(&m, "{\"cniVersion\":\"1.0.0\",\"code\":");
	put_uint(&m, code);
	put(&m, ",\"msg\":\"");
	put_json(&m, msg_text);
	put(&m, "\",\"details\":\"");
	put_json(&m, details);
	put(&m, "\"}\n");
	(void)write_all_fd(1, m.buf, m.len);
	_exit(1);
}

/* "<prefix><path><middle>[: strerror]" as a plain NUL-terminated string. */
static _Noreturn void fail_agent(const char *prefix, const char *middle, int err, const char *details)
{
	struct msg m = {.len = 0};
	put(&m, prefix);
	put(&m, sock_path);
	put(&m, middle);
	if (err) {
		put(&m, ": ");
		put(&m, strerror(err));
	}
	if (m.len == sizeof m.buf)
		m.len--;
	m.buf[m.len] = '\0';
	fail(11, m.buf, details);
}

/* ---- time ---------------------------------------------------------------------- */

static long long now_ms(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
		return 0;
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static long timeout_ms(void)
{
	const char *v = getenv("XCLUSTER_CNI_SHIM_TIMEOUT_MS");
	long t = 0;
	if (!v || !*v)
		return DEFAULT_TIMEOUT_MS;
	for (; *v; v++) {
		if (*v < '0' || *v > '9' || t > 100000000L)
			return DEFAULT_TIMEOUT_MS;
		t = t * 10 + (*v - '0');
	}
	return t > 0 ? t : DEFAULT_TIMEOUT_MS;
}

/* Fails with code 11: the deadline passed while doing (": while ..."). */
static _Noreturn void fail_timeout(const char *doing)
{
	struct msg m = {.len = 0};
	put(&m, " did not answer within ");
	put_uint(&m, (unsigned long long)timeout_ms());
	put(&m, " ms (");
	put(&m, doing + 2); /* doing starts with ": " */
	put(&m, ")");
	m.buf[m.len < sizeof m.buf ? m.len : sizeof m.buf - 1] = '\0';
	fail_agent("xcluster-cni agent at ", m.buf, 0, HINT);
}

/* Waits until fd is ready for events, or the deadline passes (then fails, code 11). */
static void wait_fd(int fd, short events, const char *doing)
{
	for (;;) {
		long long left = deadline_ms - now_ms();
		struct pollfd p = {.fd = fd, .events = events, .revents = 0};
		int r;
		if (left <= 0)
			fail_timeout(doing);
		r = poll(&p, 1, left > 0x7fffffff ? 0x7fffffff : (int)left);
		if (r > 0)
			return;
		if (r < 0 && errno != EINTR)
			fail_agent("xcluster-cni agent at ", doing, errno, HINT);
	}
}

/* ---- socket I/O (non-blocking socket, deadline-bounded) -------------------------- */

static void send_all(int fd, const void *buf, size_t len)
{
	const unsigned char *p = buf;
	while (len > 0) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				wait_fd(fd, POLLOUT, ": while sending the request");
				continue;
			}
			fail_agent("xcluster-cni agent at ", " failed while the request was sent",
				   errno, HINT);
		}
		p += n;
		len -= (size_t)n;
	}
}

/* The request is gathered here and sent in as few writes as possible: one for a usual
 * request (a few KiB), so the agent wakes once, not once per field. */
static unsigned char req_buf[64 * 1024];
static size_t req_len;

static void flush_request(int fd)
{
	send_all(fd, req_buf, req_len);
	req_len = 0;
}

static void queue(int fd, const void *buf, size_t len)
{
	if (req_len + len > sizeof req_buf)
		flush_request(fd);
	if (len >= sizeof req_buf) {
		send_all(fd, buf, len);
		return;
	}
	memcpy(req_buf + req_len, buf, len);
	req_len += len;
}

static void queue_u32(int fd, uint32_t v)
{
	unsigned char b[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16),
			      (unsigned char)(v >> 8), (unsigned char)v};
	queue(fd, b, 4);
}

/* Reads exactly len bytes; on EOF or error fails with code 11 naming what was read. */
static void recv_all(int fd, unsigned char *buf, size_t len, const char *what)
{
	size_t got = 0;
	while (got < len) {
		ssize_t n = recv(fd, buf + got, len - got, 0);
		if (n > 0) {
			got += (size_t)n;
			continue;
		}
		if (n == 0) {
			struct msg m = {.len = 0};
			put(&m, " closed the connection without a complete answer (");
			put(&m, what);
			put(&m, ": got ");
			put_uint(&m, got);
			put(&m, " of ");
			put_uint(&m, len);
			put(&m, " bytes)");
			m.buf[m.len < sizeof m.buf ? m.len : sizeof m.buf - 1] = '\0';
			fail_agent("xcluster-cni agent at ", m.buf, 0, HINT);
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			wait_fd(fd, POLLIN, ": while waiting for the answer");
			continue;
		}
		fail_agent("xcluster-cni agent at ", " failed while the answer was read", errno,
			   HINT);
	}
}

static uint32_t get_u32(const unsigned char *b)
{
	return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* ---- the config's "socket" key ------------------------------------------------- */

static int is_ws(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Copies the value of the first "socket": "<value>" in buf into sock_path; default if
 * absent. Fails with code 7 if the value is too long, has escapes or is unterminated. */
static void find_socket(const unsigned char *buf, size_t len)
{
	static const char key[] = "\"socket\"";
	const size_t klen = sizeof key - 1;
	size_t i = 0;
	while (i + klen <= len) {
		size_t j, start;
		if (memcmp(buf + i, key, klen) != 0) {
			i++;
			continue;
		}
		j = i + klen;
		while (j < len && is_ws(buf[j]))
			j++;
		if (j >= len || buf[j] != ':') {
			i++; /* "socket" used as a value, not a key */
			continue;
		}
		j++;
		while (j < len && is_ws(buf[j]))
			j++;
		if (j >= len || buf[j] != '"')
			fail(7, "invalid network config: \"socket\" is not a string",
			     "the IPAM \"socket\" key names the agent's Unix socket");
		start = ++j;
		while (j < len && buf[j] != '"' && buf[j] != '\\' && buf[j] >= 0x20 &&
		       j - start <= MAX_SOCKET_PATH)
			j++;
		if (j - start > MAX_SOCKET_PATH)
			fail(7, "invalid network config: \"socket\" is longer than 107 bytes",
			     "a Unix socket path has at most 107 bytes");
		if (j >= len || buf[j] != '"' || j == start)
			fail(7,
			     "invalid network config: \"socket\" must be a non-empty JSON string "
			     "without escapes",
			     "the IPAM \"socket\" key names the agent's Unix socket");
		memcpy(sock_path, buf + start, j - start);
		sock_path[j - start] = '\0';
		return;
	}
	memcpy(sock_path, DEFAULT_SOCKET, sizeof DEFAULT_SOCKET);
}

/* ---- main ---------------------------------------------------------------------- */

int main(int argc, char **argv)
{
	const char *name = (argc > 0 && argv[0]) ? argv[0] : "";
	const char *slash = strrchr(name, '/');
	char plugin_entry[sizeof PLUGIN_VAR + 256];
	size_t in_len = 0, name_len, n_env = 1, e;
	struct sockaddr_un addr;
	unsigned char hdr[12];
	uint32_t code, out_len;
	int fd, rc;

	if (slash)
		name = slash + 1;
	name_len = strlen(name);
	if (name_len > 255)
		name_len = 255;
	memcpy(plugin_entry, PLUGIN_VAR, sizeof PLUGIN_VAR - 1);
	memcpy(plugin_entry + sizeof PLUGIN_VAR - 1, name, name_len);
	name_len += sizeof PLUGIN_VAR - 1;

	/* stdin: the network config, at most 1 MiB */
	for (;;) {
		ssize_t n = read(0, in_buf + in_len, sizeof in_buf - in_len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			struct msg m = {.len = 0};
			put(&m, "cannot read the network config from stdin: ");
			put(&m, strerror(errno));
			m.buf[m.len < sizeof m.buf ? m.len : sizeof m.buf - 1] = '\0';
			fail(7, m.buf, "the runtime passes the network config on stdin");
		}
		if (n == 0)
			break;
		in_len += (size_t)n;
		if (in_len > MAX_STDIN)
			fail(7, "invalid network config: larger than 1 MiB",
			     "the xcluster-cni shim accepts at most 1048576 bytes on stdin");
	}
	find_socket(in_buf, in_len);

	/* the environment: CNI_* only (bounded count and size) */
	for (e = 0; environ && environ[e]; e++) {
		if (strncmp(environ[e], "CNI_", 4) != 0)
			continue;
		if (strlen(environ[e]) > MAX_ENV_ENTRY)
			fail(4, "an environment variable CNI_* is longer than 65536 bytes",
			     "the xcluster-cni shim forwards CNI_* variables of at most 64 KiB");
		if (++n_env > MAX_ENV_ENTRIES)
			fail(4, "more than 63 CNI_* environment variables",
			     "the xcluster-cni shim forwards at most 63 CNI_* variables");
	}

	signal(SIGPIPE, SIG_IGN);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		fail_agent("cannot create a socket for the xcluster-cni agent at ", "", errno,
			   HINT);
	memset(&addr, 0, sizeof addr);
	addr.sun_family = AF_UNIX;
	memcpy(addr.sun_path, sock_path, strlen(sock_path) + 1);
	deadline_ms = now_ms() + timeout_ms();
	for (;;) {
		/* a full listen backlog (EAGAIN on a non-blocking Unix socket) means a busy
		 * agent, not an absent one: retry every 5 ms until the deadline */
		struct timespec pause = {.tv_sec = 0, .tv_nsec = 5000000};
		rc = connect(fd, (struct sockaddr *)&addr, sizeof addr);
		if (rc == 0 || errno != EAGAIN)
			break;
		if (now_ms() >= deadline_ms)
			fail_timeout(": while connecting, listen backlog full");
		nanosleep(&pause, NULL);
	}
	if (rc != 0) {
		int err = errno;
		if (err != EINTR && err != EINPROGRESS)
			fail_agent("xcluster-cni agent not reachable at ", "", err, HINT);
		/* completes asynchronously: wait, then read the outcome */
		wait_fd(fd, POLLOUT, ": while connecting");
		socklen_t sl = sizeof err;
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &sl) != 0)
			err = errno;
		if (err)
			fail_agent("xcluster-cni agent not reachable at ", "", err, HINT);
	}

	/* request */
	queue(fd, "XCN1", 4);
	queue_u32(fd, (uint32_t)n_env);
	for (e = 0; environ && environ[e]; e++) {
		if (strncmp(environ[e], "CNI_", 4) != 0)
			continue;
		queue_u32(fd, (uint32_t)strlen(environ[e]));
		queue(fd, environ[e], strlen(environ[e]));
	}
	queue_u32(fd, (uint32_t)name_len);
	queue(fd, plugin_entry, name_len);
	queue_u32(fd, (uint32_t)in_len);
	queue(fd, in_buf, in_len);
	flush_request(fd);
	if (shutdown(fd, SHUT_WR) != 0 && errno != ENOTCONN)
		fail_agent("xcluster-cni agent at ", " failed while the request was sent", errno,
			   HINT);

	/* answer */
	recv_all(fd, hdr, sizeof hdr, "header");
	if (memcmp(hdr, "XCN1", 4) != 0)
		fail_agent("xcluster-cni agent at ", " sent a bad answer (wrong magic)", 0, HINT);
	code = get_u32(hdr + 4);
	out_len = get_u32(hdr + 8);
	if (code > 255)
		fail_agent("xcluster-cni agent at ", " sent a bad answer (exit code above 255)", 0,
			   HINT);
	if (out_len > MAX_STDOUT)
		fail_agent("xcluster-cni agent at ", " sent a bad answer (stdout above 4 MiB)", 0,
			   HINT);
	recv_all(fd, out_buf, out_len, "stdout");
	close(fd);
	if (write_all_fd(1, out_buf, out_len) != 0)
		return 1;
	return (int)code;
}
