import { Injectable, OnModuleDestroy, OnModuleInit } from '@nestjs/common';
import { PrismaPg } from '@prisma/adapter-pg';
import { PrismaClient } from '../generated/prisma/client';

/**
 * The one PrismaClient of the process, on a node-postgres pool.
 *
 * DATABASE_URL points at pgtenant, with this deployment's tenant JWT as the password:
 *   postgresql://notes:<JWT>@pgtenant:6432/app?sslmode=require
 * There is no tenant anywhere in this code. pgtenant sets the tenant on every server
 * connection before the first statement of each transaction runs there, and PostgreSQL's
 * Row-Level Security confines every query to that tenant's rows.
 */
@Injectable()
export class PrismaService extends PrismaClient implements OnModuleInit, OnModuleDestroy {
  constructor() {
    const connectionString = process.env.DATABASE_URL;
    if (!connectionString) {
      throw new Error('DATABASE_URL is not set');
    }
    super({ adapter: new PrismaPg({ connectionString }) });
  }

  async onModuleInit(): Promise<void> {
    await this.$connect();
  }

  async onModuleDestroy(): Promise<void> {
    await this.$disconnect();
  }
}
