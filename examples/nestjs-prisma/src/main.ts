import 'reflect-metadata';
import { HttpAdapterHost, NestFactory } from '@nestjs/core';
import { AppModule } from './app.module';
import { RowLevelSecurityFilter } from './row-level-security.filter';

async function bootstrap(): Promise<void> {
  const app = await NestFactory.create(AppModule, { logger: ['error', 'warn'] });
  app.enableShutdownHooks();
  app.useGlobalFilters(new RowLevelSecurityFilter(app.get(HttpAdapterHost).httpAdapter));
  const port = Number(process.env.PORT ?? 3000);
  const host = process.env.HOST ?? '0.0.0.0';
  await app.listen(port, host);
  console.log(`notes service listening on ${host}:${port}`);
}

void bootstrap();
