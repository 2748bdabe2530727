import Fastify from 'fastify';

/** The reference: a bare Fastify server answering a constant to the same form POST. */
const app = Fastify({ logger: false });
app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_request, body, done) =>
  done(null, Object.fromEntries(new URLSearchParams(body as string))),
);
app.get('/ready', async () => ({ ok: true }));
app.post('/introspect', async () => ({ active: true }));
void app.listen({ host: '127.0.0.1', port: Number(process.env.PORT) });
